/* Integration-test harness; see harness.h. */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char** environ;

#define LISTEN_PREFIX "paramex-server listening on "

/* ---- small helpers ------------------------------------------------------------------ */

int64_t px_h_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int remaining_ms(int64_t deadline) {
  int64_t left = deadline - px_h_now_ms();
  if (left < 0) return 0;
  if (left > 3600000) return 3600000;
  return (int)left;
}

static const char* env_or_die(const char* name) {
  const char* v = getenv(name);
  if (!v || !*v) {
    fprintf(stderr, "harness: environment variable %s is not set (run through meson test)\n", name);
    abort();
  }
  return v;
}

const char* px_h_server_bin(void) { return env_or_die("PMX_SERVER_BIN"); }
const char* px_h_worker_bin(void) { return env_or_die("PMX_WORKER_BIN"); }

const char* px_h_describe_wstatus(int ws, char* buf, size_t cap) {
  if (WIFEXITED(ws))
    snprintf(buf, cap, "exited %d", WEXITSTATUS(ws));
  else if (WIFSIGNALED(ws))
    snprintf(buf, cap, "killed by signal %d (%s)", WTERMSIG(ws), strsignal(WTERMSIG(ws)));
  else
    snprintf(buf, cap, "wait status 0x%x", ws);
  return buf;
}

/* ---- the registry of started processes ------------------------------------------------ */

#define MAX_CHILDREN 128
static pid_t g_children[MAX_CHILDREN]; /* 0 = free slot; only unreaped pids are kept */

static void registry_add(pid_t pid) {
  for (size_t i = 0; i < MAX_CHILDREN; i++)
    if (g_children[i] == 0) {
      g_children[i] = pid;
      return;
    }
  /* Full: the child is still reaped by its owner, it only misses px_h_kill_all. */
}

static bool registry_has(pid_t pid) {
  for (size_t i = 0; i < MAX_CHILDREN; i++)
    if (g_children[i] == pid) return true;
  return false;
}

static void registry_remove(pid_t pid) {
  for (size_t i = 0; i < MAX_CHILDREN; i++)
    if (g_children[i] == pid) g_children[i] = 0;
}

/* ---- spawning ------------------------------------------------------------------------- */

/* Whether extra holds a "NAME=..." entry for the NAME of environment entry e. */
static bool overridden(const char* e, const char* const* extra) {
  const char* eq = strchr(e, '=');
  size_t n = eq ? (size_t)(eq - e) : strlen(e);
  if (extra)
    for (const char* const* x = extra; *x; x++)
      if (strncmp(*x, e, n) == 0 && (*x)[n] == '=') return true;
  return false;
}

/* environ without PMX_* (and without the names extra sets) plus extra, in one malloc'd
 * NULL-terminated array (built before fork: the child may only make async-signal-safe
 * calls). */
static char** build_env(const char* const* extra) {
  size_t n = 0, k = 0;
  for (char** e = environ; *e; e++) n++;
  if (extra)
    for (const char* const* e = extra; *e; e++) n++;
  char** out = calloc(n + 1, sizeof *out);
  if (!out) return NULL;
  for (char** e = environ; *e; e++)
    if (strncmp(*e, "PMX_", 4) != 0 && !overridden(*e, extra)) out[k++] = *e;
  if (extra)
    for (const char* const* e = extra; *e; e++) out[k++] = (char*)*e;
  out[k] = NULL;
  return out;
}

pid_t px_h_spawn(const char* const* argv, const char* const* env, int stdout_fd, int stderr_fd) {
  char** envp = build_env(env);
  if (!envp) return -1;
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull < 0) {
    free(envp);
    return -1;
  }
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    /* Child: async-signal-safe calls only. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &dfl, NULL); /* the child must cope with SIGPIPE itself */
    sigaction(SIGTERM, &dfl, NULL);
    sigaction(SIGINT, &dfl, NULL);
    if (dup2(devnull, 0) < 0) _exit(127);
    if (stdout_fd >= 0 && dup2(stdout_fd, 1) < 0) _exit(127);
    if (stderr_fd >= 0 && dup2(stderr_fd, 2) < 0) _exit(127);
    execve(argv[0], (char* const*)argv, envp);
    static const char msg[] = "harness: execve failed\n";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
    _exit(127);
  }
  close(devnull);
  free(envp);
  if (pid < 0) return -1;
  registry_add(pid);
  return pid;
}

int px_h_wait(pid_t pid, int timeout_ms, int* wstatus) {
  int ws = 0;
  pid_t r = waitpid(pid, &ws, WNOHANG);
  if (r == pid) goto reaped;
  if (r < 0) return -1;
  int pfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pfd >= 0) {
    int64_t deadline = px_h_now_ms() + timeout_ms;
    for (;;) {
      struct pollfd p = {.fd = pfd, .events = POLLIN};
      int pr = poll(&p, 1, remaining_ms(deadline));
      if (pr < 0 && errno == EINTR) continue;
      if (pr <= 0) break; /* timeout */
      r = waitpid(pid, &ws, 0);
      break;
    }
    close(pfd);
    if (r == pid) goto reaped;
    return -1;
  }
  /* No pidfd (kernel < 5.3): poll waitpid every 10 ms, still bounded. */
  for (int64_t deadline = px_h_now_ms() + timeout_ms;;) {
    r = waitpid(pid, &ws, WNOHANG);
    if (r == pid) goto reaped;
    if (r < 0 || px_h_now_ms() >= deadline) return -1;
    poll(NULL, 0, 10);
  }
reaped:
  registry_remove(pid);
  if (wstatus) *wstatus = ws;
  return 0;
}

void px_h_kill(pid_t pid) {
  if (pid <= 0 || !registry_has(pid)) return;
  kill(pid, SIGKILL);
  int ws;
  while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  registry_remove(pid);
}

void px_h_kill_all(void) {
  for (size_t i = 0; i < MAX_CHILDREN; i++)
    if (g_children[i] != 0) px_h_kill(g_children[i]);
}

/* ---- reading child output --------------------------------------------------------------- */

ssize_t px_h_read_all(int fd, char* buf, size_t cap, int timeout_ms) {
  size_t len = 0;
  int64_t deadline = px_h_now_ms() + timeout_ms;
  buf[0] = 0;
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int pr = poll(&p, 1, remaining_ms(deadline));
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) return -1;
    char tmp[4096];
    ssize_t n = read(fd, tmp, sizeof tmp);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    size_t room = cap - 1 - len;
    size_t take = (size_t)n < room ? (size_t)n : room;
    memcpy(buf + len, tmp, take);
    len += take;
    buf[len] = 0;
  }
  return (ssize_t)len;
}

int px_h_read_line_prefix(int fd, const char* prefix, char* acc, size_t cap, char* line,
                           size_t linecap, int timeout_ms) {
  int64_t deadline = px_h_now_ms() + timeout_ms;
  for (;;) {
    char* nl;
    while ((nl = strchr(acc, '\n')) != NULL) {
      *nl = 0;
      bool match = strncmp(acc, prefix, strlen(prefix)) == 0;
      if (match) snprintf(line, linecap, "%s", acc);
      memmove(acc, nl + 1, strlen(nl + 1) + 1);
      if (match) return 0;
    }
    size_t len = strlen(acc);
    if (len + 1 >= cap) acc[len = 0] = 0; /* a line longer than cap: drop it */
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int pr = poll(&p, 1, remaining_ms(deadline));
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) return -1;
    ssize_t n = read(fd, acc + len, cap - 1 - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    acc[len + (size_t)n] = 0;
  }
}

/* ---- the server ------------------------------------------------------------------------- */

int px_h_server_start(px_h_server* s, const char* const* args, const char* const* env,
                       int timeout_ms, char* err, size_t errlen) {
  return px_h_server_start_ex(s, NULL, args, env, -1, timeout_ms, err, errlen);
}

int px_h_server_start_ex(px_h_server* s, const char* listen, const char* const* args,
                          const char* const* env, int stderr_fd, int timeout_ms, char* err,
                          size_t errlen) {
  memset(s, 0, sizeof *s);
  s->out_fd = -1;
  const char* argv[64];
  size_t n = 0;
  argv[n++] = px_h_server_bin();
  argv[n++] = "--listen";
  argv[n++] = listen ? listen : "127.0.0.1:0";
  if (args)
    for (const char* const* a = args; *a && n < 63; a++) argv[n++] = *a;
  argv[n] = NULL;

  int pfd[2];
  if (pipe2(pfd, O_CLOEXEC) != 0) {
    snprintf(err, errlen, "pipe: %s", strerror(errno));
    return -1;
  }
  pid_t pid = px_h_spawn(argv, env, pfd[1], stderr_fd);
  close(pfd[1]);
  if (pid < 0) {
    close(pfd[0]);
    snprintf(err, errlen, "cannot start %s: %s", argv[0], strerror(errno));
    return -1;
  }
  s->pid = pid;
  s->out_fd = pfd[0];

  /* The first stdout line must be the listening line. */
  char acc[1024] = "";
  int64_t deadline = px_h_now_ms() + timeout_ms;
  for (;;) {
    char* nl = strchr(acc, '\n');
    if (nl) {
      *nl = 0;
      int port = 0;
      char tail[8];
      if (strncmp(acc, LISTEN_PREFIX "127.0.0.1:", strlen(LISTEN_PREFIX "127.0.0.1:")) != 0 ||
          sscanf(acc + strlen(LISTEN_PREFIX "127.0.0.1:"), "%d%1s", &port, tail) != 1 ||
          port <= 0 || port > 65535) {
        snprintf(err, errlen, "unexpected first stdout line from the server: '%s'", acc);
        goto fail;
      }
      s->port = port;
      snprintf(s->addr, sizeof s->addr, "127.0.0.1:%d", port);
      if (nl[1] != 0) {
        snprintf(err, errlen, "the server printed more than one stdout line: '%s'", nl + 1);
        goto fail;
      }
      return 0;
    }
    size_t len = strlen(acc);
    if (len + 1 >= sizeof acc) {
      snprintf(err, errlen, "the server's first stdout line is too long");
      goto fail;
    }
    struct pollfd p = {.fd = s->out_fd, .events = POLLIN};
    int pr = poll(&p, 1, remaining_ms(deadline));
    if (pr < 0 && errno == EINTR) continue;
    if (pr == 0) {
      snprintf(err, errlen, "no listening line within %d ms (stdout so far: '%s')", timeout_ms, acc);
      goto fail;
    }
    ssize_t r = read(s->out_fd, acc + len, sizeof acc - 1 - len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      int ws = 0;
      char d[96] = "still running";
      if (px_h_wait(pid, 5000, &ws) == 0) {
        px_h_describe_wstatus(ws, d, sizeof d);
        s->pid = 0;
      }
      snprintf(err, errlen, "server closed stdout before its listening line (%s; stdout: '%s')", d, acc);
      goto fail;
    }
    acc[len + (size_t)r] = 0;
  }
fail:
  if (s->pid > 0) px_h_kill(s->pid);
  s->pid = 0;
  close(s->out_fd);
  s->out_fd = -1;
  return -1;
}

int px_h_server_stop(px_h_server* s, int timeout_ms, int* wstatus, size_t* extra) {
  int rc = 0;
  if (extra) *extra = 0;
  if (s->pid > 0) {
    kill(s->pid, SIGTERM);
    if (px_h_wait(s->pid, timeout_ms, wstatus) != 0) {
      px_h_kill(s->pid);
      rc = -1;
    }
    s->pid = 0;
  }
  if (s->out_fd >= 0) {
    char rest[4096];
    ssize_t n = rc == 0 ? px_h_read_all(s->out_fd, rest, sizeof rest, 2000) : 0;
    if (extra && n > 0) *extra = (size_t)n;
    close(s->out_fd);
    s->out_fd = -1;
  }
  return rc;
}

/* ---- files ------------------------------------------------------------------------------ */

int px_h_mkdtemp(char* out, size_t cap) {
  const char* t = getenv("TMPDIR");
  snprintf(out, cap, "%s/pmx-it-XXXXXX", t && *t ? t : "/tmp");
  return mkdtemp(out) ? 0 : -1;
}

void px_h_rmtree(const char* dir) {
  DIR* d = opendir(dir);
  if (!d) return;
  struct dirent* e;
  while ((e = readdir(d)) != NULL) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    struct stat st;
    if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
      px_h_rmtree(p);
    else
      unlink(p);
  }
  closedir(d);
  rmdir(dir);
}

void* px_h_read_file(const char* path, size_t* len) {
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  void* buf = NULL;
  if (fseek(f, 0, SEEK_END) == 0) {
    long n = ftell(f);
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) {
      buf = malloc((size_t)n + 1);
      if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
      }
      if (buf) {
        ((char*)buf)[n] = 0;
        *len = (size_t)n;
      }
    }
  }
  fclose(f);
  return buf;
}

long px_h_rss_kib(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE* f = fopen(path, "r");
  if (!f) return -1;
  long kib = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) break;
  fclose(f);
  return kib;
}

/* ---- rpc -------------------------------------------------------------------------------- */

typedef struct hcall {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int sent;        /* 0 pending, 1 ok, 2 failed */
  bool have_msg;
  px_msg* msg;
  bool done;
  bool abandoned;  /* the harness gave up waiting; on_done frees */
  int status;
  char details[512];
} hcall;

static void hcall_free(hcall* h) {
  pthread_mutex_destroy(&h->mu);
  pthread_cond_destroy(&h->cv);
  free(h);
}

static void on_sent(px_cli_call* call, void* ctx, bool ok) {
  (void)call;
  hcall* h = ctx;
  pthread_mutex_lock(&h->mu);
  h->sent = ok ? 1 : 2;
  pthread_cond_broadcast(&h->cv);
  pthread_mutex_unlock(&h->mu);
}

static void on_message(px_cli_call* call, void* ctx, px_msg* msg) {
  (void)call;
  hcall* h = ctx;
  pthread_mutex_lock(&h->mu);
  if (h->abandoned) {
    px_msg_free(msg);
  } else {
    h->msg = msg;
    h->have_msg = true;
  }
  pthread_cond_broadcast(&h->cv);
  pthread_mutex_unlock(&h->mu);
}

static void on_done(px_cli_call* call, void* ctx, int status, const char* details) {
  (void)call;
  hcall* h = ctx;
  pthread_mutex_lock(&h->mu);
  if (h->abandoned) {
    pthread_mutex_unlock(&h->mu);
    hcall_free(h);
    return;
  }
  h->done = true;
  h->status = status;
  snprintf(h->details, sizeof h->details, "%s", details ? details : "");
  pthread_cond_broadcast(&h->cv);
  pthread_mutex_unlock(&h->mu);
}

static const px_cli_call_cbs g_cbs = {on_message, on_sent, on_done};

static void noop_release(void* ctx) { (void)ctx; }

/* Waits (h->mu held) until *flag or the deadline. Returns false on timeout. */
static bool wait_flag(hcall* h, const bool* flag, const int* iflag, int64_t deadline) {
  while (!(flag ? *flag : *iflag != 0)) {
    int64_t ms = deadline - px_h_now_ms();
    if (ms <= 0) return false;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&h->cv, &h->mu, &ts);
  }
  return true;
}

static int push_resp(px_h_result* res, px_msg* m) {
  size_t len = 0;
  const uint8_t* flat = px_msg_flat(m, &len);
  uint8_t* copy = malloc(len ? len : 1);
  uint8_t** r2 = realloc(res->resp, (res->nresp + 1) * sizeof *r2);
  if (r2) res->resp = r2;
  size_t* l2 = realloc(res->resp_len, (res->nresp + 1) * sizeof *l2);
  if (l2) res->resp_len = l2;
  if (!flat || !copy || !r2 || !l2) {
    free(copy);
    return -1;
  }
  memcpy(copy, flat, len);
  res->resp[res->nresp] = copy;
  res->resp_len[res->nresp] = len;
  res->nresp++;
  return 0;
}

int px_h_call(px_rpc_channel* ch, const char* path, const px_h_msg* msgs, size_t n,
               int64_t timeout_ms, px_h_result* res) {
  return px_h_call_ex(ch, path, msgs, n, timeout_ms, true, res);
}

int px_h_call_ex(px_rpc_channel* ch, const char* path, const px_h_msg* msgs, size_t n,
                 int64_t timeout_ms, bool wait_for_ready, px_h_result* res) {
  memset(res, 0, sizeof *res);
  res->status = -1;
  int64_t t0 = px_h_now_ms();
  int64_t deadline = t0 + timeout_ms + 10000;
  hcall* h = calloc(1, sizeof *h);
  if (!h) {
    snprintf(res->details, sizeof res->details, "harness: out of memory");
    return res->status;
  }
  pthread_mutex_init(&h->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&h->cv, &ca);
  pthread_condattr_destroy(&ca);

  px_cli_call* call = px_cli_call_start(ch, path, timeout_ms, wait_for_ready, &g_cbs, h);
  if (!call) {
    hcall_free(h);
    snprintf(res->details, sizeof res->details, "harness: pmx_cli_call_start failed");
    return res->status;
  }
  const char* hang = NULL;

  pthread_mutex_lock(&h->mu);
  bool open = true;
  for (size_t i = 0; i < n && open; i++) {
    px_out out = {msgs[i].head, msgs[i].head_len, msgs[i].body, msgs[i].body_len,
                   noop_release, NULL};
    h->sent = 0;
    pthread_mutex_unlock(&h->mu);
    bool started = px_cli_call_send(call, &out, i + 1 == n);
    pthread_mutex_lock(&h->mu);
    if (!started) {
      open = false;
      break;
    }
    if (!wait_flag(h, NULL, &h->sent, deadline)) {
      hang = "send";
      break;
    }
    if (h->sent == 2) open = false;
  }
  if (!hang && open && n == 0) {
    pthread_mutex_unlock(&h->mu);
    px_cli_call_close_send(call);
    pthread_mutex_lock(&h->mu);
  }
  while (!hang) {
    h->have_msg = false;
    h->msg = NULL;
    pthread_mutex_unlock(&h->mu);
    bool started = px_cli_call_read(call);
    pthread_mutex_lock(&h->mu);
    if (!started) break;
    if (!wait_flag(h, &h->have_msg, NULL, deadline)) {
      hang = "read";
      break;
    }
    if (!h->msg) break;
    px_msg* m = h->msg;
    h->msg = NULL;
    pthread_mutex_unlock(&h->mu);
    int prc = push_resp(res, m);
    px_msg_free(m);
    pthread_mutex_lock(&h->mu);
    if (prc != 0) {
      pthread_mutex_unlock(&h->mu);
      px_cli_call_cancel(call);
      pthread_mutex_lock(&h->mu);
    }
  }
  if (hang) {
    pthread_mutex_unlock(&h->mu);
    px_cli_call_cancel(call);
    pthread_mutex_lock(&h->mu);
  }
  pthread_mutex_unlock(&h->mu);
  px_cli_call_unref(call);
  pthread_mutex_lock(&h->mu);
  bool done = wait_flag(h, &h->done, NULL, deadline + (hang ? 5000 : 0));
  res->elapsed_ms = px_h_now_ms() - t0;
  if (done && !hang) {
    res->status = h->status;
    snprintf(res->details, sizeof res->details, "%s", h->details);
  } else if (done) {
    snprintf(res->details, sizeof res->details,
             "harness: no %s completion within %lld ms (call then ended %s: %.300s)", hang,
             (long long)(timeout_ms + 10000), px_status_name(h->status), h->details);
  } else {
    snprintf(res->details, sizeof res->details, "harness: call did not finish within %lld ms%s%s",
             (long long)(timeout_ms + 10000), hang ? " waiting for " : "", hang ? hang : "");
  }
  if (done) {
    pthread_mutex_unlock(&h->mu);
    hcall_free(h);
  } else {
    h->abandoned = true; /* on_done frees it if it ever comes */
    pthread_mutex_unlock(&h->mu);
  }
  return res->status;
}

void px_h_result_free(px_h_result* res) {
  for (size_t i = 0; i < res->nresp; i++) free(res->resp[i]);
  free(res->resp);
  free(res->resp_len);
  res->resp = NULL;
  res->resp_len = NULL;
  res->nresp = 0;
}

struct px_h_async {
  pthread_t th;
  px_rpc_channel* ch;
  const char* path;
  const px_h_msg* msgs;
  size_t n;
  int64_t timeout_ms;
  bool wait_for_ready;
  px_h_result res;
};

static void* async_main(void* arg) {
  px_h_async* a = arg;
  px_h_call_ex(a->ch, a->path, a->msgs, a->n, a->timeout_ms, a->wait_for_ready, &a->res);
  return NULL;
}

px_h_async* px_h_async_start(px_rpc_channel* ch, const char* path, const px_h_msg* msgs,
                               size_t n, int64_t timeout_ms) {
  return px_h_async_start_ex(ch, path, msgs, n, timeout_ms, true);
}

px_h_async* px_h_async_start_ex(px_rpc_channel* ch, const char* path, const px_h_msg* msgs,
                                size_t n, int64_t timeout_ms, bool wait_for_ready) {
  px_h_async* a = calloc(1, sizeof *a);
  if (!a) return NULL;
  a->wait_for_ready = wait_for_ready;
  a->ch = ch;
  a->path = path;
  a->msgs = msgs;
  a->n = n;
  a->timeout_ms = timeout_ms;
  if (pthread_create(&a->th, NULL, async_main, a) != 0) {
    free(a);
    return NULL;
  }
  return a;
}

void px_h_async_join(px_h_async* a, px_h_result* res) {
  pthread_join(a->th, NULL);
  *res = a->res;
  free(a);
}

int px_h_unary_pb(px_rpc_channel* ch, const char* path, const ProtobufCMessage* req,
                   const ProtobufCMessageDescriptor* resp_desc, ProtobufCMessage** resp_out,
                   int64_t timeout_ms, char* details, size_t details_cap) {
  char dummy[8];
  if (!details) {
    details = dummy;
    details_cap = sizeof dummy;
  }
  details[0] = 0;
  if (resp_out) *resp_out = NULL;
  size_t len = protobuf_c_message_get_packed_size(req);
  uint8_t* buf = malloc(len ? len : 1);
  if (!buf) return -1;
  protobuf_c_message_pack(req, buf);
  uint8_t* resp = NULL;
  size_t resp_len = 0;
  int st = px_rpc_unary(ch, path, buf, len, timeout_ms, true, &resp, &resp_len, details,
                         details_cap);
  free(buf);
  if (st == PX_ST_OK && resp_out) {
    *resp_out = protobuf_c_message_unpack(resp_desc, NULL, resp_len, resp);
    if (!*resp_out) {
      snprintf(details, details_cap, "harness: the %s response does not unpack", path);
      st = -2;
    }
  }
  free(resp);
  return st;
}

Paramex__V1__StatsResponse* px_h_stats(px_rpc_channel* ch, char* details, size_t cap) {
  Paramex__V1__StatsRequest req = PARAMEX__V1__STATS_REQUEST__INIT;
  ProtobufCMessage* resp = NULL;
  int st = px_h_unary_pb(ch, PX_H_PATH_STATS, &req.base, &paramex__v1__stats_response__descriptor,
                          &resp, 10000, details, cap);
  if (st != PX_ST_OK) {
    if (details && st >= 0) {
      char tmp[512];
      snprintf(tmp, sizeof tmp, "Stats: %s: %s", px_status_name(st), details);
      snprintf(details, cap, "%s", tmp);
    }
    return NULL;
  }
  return (Paramex__V1__StatsResponse*)resp;
}

const Paramex__V1__TensorStats* px_h_stats_tensor(const Paramex__V1__StatsResponse* st,
                                                   const char* name) {
  for (size_t i = 0; st && i < st->n_tensors; i++)
    if (st->tensors[i]->name && strcmp(st->tensors[i]->name, name) == 0) return st->tensors[i];
  return NULL;
}

pid_t px_h_spawn_piped(const char* const* argv, const char* const* env, int* out_fd) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return -1;
  pid_t pid = px_h_spawn(argv, env, p[1], p[1]);
  close(p[1]);
  if (pid < 0) {
    close(p[0]);
    return -1;
  }
  *out_fd = p[0];
  return pid;
}

int px_h_run(const char* const* argv, const char* const* env, char* out, size_t cap,
             int timeout_ms, int* wstatus) {
  int fd;
  out[0] = 0;
  pid_t pid = px_h_spawn_piped(argv, env, &fd);
  if (pid < 0) return -1;
  int64_t until = px_h_now_ms() + timeout_ms;
  ssize_t n = px_h_read_all(fd, out, cap, timeout_ms);
  close(fd);
  int64_t left = until - px_h_now_ms();
  if (n < 0 || px_h_wait(pid, left > 0 ? (int)left : 1, wstatus) != 0) {
    px_h_kill(pid);
    return -1;
  }
  return 0;
}

char* px_h_cli(const char* const* args, int* exit_status) {
  const char* bin = getenv("PMX_CLI_BIN");
  *exit_status = -1;
  if (!bin || !*bin) return NULL;
  const char* argv[16];
  size_t n = 0;
  argv[n++] = bin;
  for (size_t i = 0; args[i] && n < 15; i++) argv[n++] = args[i];
  argv[n] = NULL;
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return NULL;
  pid_t pid = px_h_spawn(argv, NULL, p[1], -1);
  close(p[1]);
  char* out = pid > 0 ? calloc(1, (1 << 20) + 1) : NULL;
  if (out) px_h_read_all(p[0], out, 1 << 20, 30000);
  close(p[0]);
  int ws = 0;
  if (pid > 0 && px_h_wait(pid, 30000, &ws) == 0 && WIFEXITED(ws)) *exit_status = WEXITSTATUS(ws);
  return out;
}
