/* A contiguous piece of a received message: gRPC delivers a message as a list of them. */
#ifndef PX_IOV_H
#define PX_IOV_H

#include <stddef.h>
#include <stdint.h>

typedef struct px_iov {
  const uint8_t* p;
  size_t n;
} px_iov;

#endif
