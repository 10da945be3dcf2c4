/* What libparamex reports (errors.c): the calling thread's last error, statuses from the
 * transport, and the log sink the application sets (pmx_set_log_callback). */
#ifndef PX_ERRORS_H
#define PX_ERRORS_H

#include "paramex/paramex.h"

#define PX_ERROR_LEN 512

/* Sets the calling thread's last error (pmx_last_error) and returns st. */
pmx_status px_fail(pmx_status st, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
/* A transport status (rpc_base.h) as a pmx_status. */
pmx_status px_from_rpc(int st);
/* The calling thread's last error buffer (PX_ERROR_LEN bytes), to save and restore it
 * around an internal call that may fail harmlessly. */
char* px_last_error_buf(void);

#endif
