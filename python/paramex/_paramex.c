/* paramex._paramex: the CPython extension over libparamex (paramex.h). Python's paramex
 * package (paramex/__init__.py) wraps it; see there for the documented API.
 *
 * Buffers: every array is taken through the buffer protocol, C-contiguous, in place: a push
 * reads the caller's memory, a pull writes it (no copy in Python; the library's own copies
 * are those of paramex.h). Every network wait runs with the GIL released. An async
 * operation holds its buffers (Py_buffer views: numpy refuses to resize or free an
 * array with an export) until it is waited for, dropped or its client closed. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "paramex/paramex.h"

/* paramex.Error's subclasses by status, set by paramex/__init__.py (_set_errors). */
static PyObject* g_errors; /* dict int -> class */
static PyObject* g_error;  /* paramex.Error */

/* Raises the class of st with message msg (a str; stolen). Returns NULL. */
static PyObject* raise_obj(int st, PyObject* msg) {
  if (!msg) return NULL;
  PyObject* key = PyLong_FromLong(st);
  PyObject* cls = key && g_errors ? PyDict_GetItemWithError(g_errors, key) : NULL;
  Py_XDECREF(key);
  if (!cls) cls = g_error ? g_error : PyExc_RuntimeError;
  PyObject* e = PyObject_CallFunction(cls, "Oi", msg, st);
  Py_DECREF(msg);
  if (e) {
    PyErr_SetObject(cls, e);
    Py_DECREF(e);
  }
  return NULL;
}

/* The same with the library's message (copied by the caller while it still held the
 * thread's last error; not necessarily UTF-8: undecodable bytes are replaced). */
static PyObject* raise_status(int st, const char* msg) {
  return raise_obj(st, PyUnicode_DecodeUTF8(msg, (Py_ssize_t)strlen(msg), "replace"));
}

/* A client-side argument error: paramex.InvalidArgument (also a ValueError); fmt is
 * PyUnicode_FromFormat's (%U, %R, ...). */
static PyObject* invalid(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  PyObject* msg = PyUnicode_FromFormatV(fmt, ap);
  va_end(ap);
  return raise_obj(PMX_ERR_INVALID_ARGUMENT, msg);
}

/* ---- types -------------------------------------------------------------------------- */

typedef struct OpObject OpObject;

typedef struct {
  PyObject_HEAD
  pmx_client* c;
  PyObject* tensors; /* dict name -> Tensor */
  uint32_t rank, world, worker_id;
  uint64_t incarnation;
  int inflight; /* calls of other threads running without the GIL */
  OpObject* ops; /* not yet waited for (a list through OpObject.next) */
} ClientObject;

typedef struct {
  PyObject_HEAD
  ClientObject* owner; /* borrowed: the client's dict holds the tensor, and the client
                        * clears this when it goes (NULL: closed) */
  pmx_tensor* t;
  PyObject* name;  /* str */
  PyObject* shape; /* tuple of int */
  int dtype;       /* pmx_dtype */
  uint64_t numel;  /* the facts of paramex.h, kept: t is freed when the client closes */
  size_t nbytes;
  uint32_t id, num_chunks;
} TensorObject;

/* The arguments of one call: tensors, their buffers, the pointers handed to libparamex. */
typedef struct batch {
  Py_ssize_t n;
  pmx_tensor** t;
  void** p;
  Py_buffer* views;
  Py_ssize_t nviews; /* views acquired */
  uint64_t* versions;
} batch;

struct OpObject {
  PyObject_HEAD
  ClientObject* owner; /* strong */
  pmx_op* op;          /* NULL once waited for */
  batch b;
  bool pull;           /* the result is a version */
  bool waiting;        /* a thread is in pmx_op_wait for it */
  int status;          /* after the wait */
  char error[512];
  OpObject *next, *prev;
};

static PyTypeObject ClientType, TensorType, OpType;

static void batch_free(batch* b) {
  for (Py_ssize_t i = 0; i < b->nviews; i++) PyBuffer_Release(&b->views[i]);
  PyMem_Free(b->t);
  PyMem_Free(b->p);
  PyMem_Free(b->views);
  PyMem_Free(b->versions);
  memset(b, 0, sizeof *b);
}

static const char* dtype_name(int d) {
  return d == PMX_F32 ? "float32" : d == PMX_BF16 ? "bfloat16" : d == PMX_F16 ? "float16" : "?";
}

/* The struct-module format a buffer of dtype d must have: 'f', 'e', or 'H' for bf16 words
 * (numpy has no bfloat16: uint16 holds them). */
static char dtype_format(int d) { return d == PMX_F32 ? 'f' : d == PMX_F16 ? 'e' : 'H'; }

/* The format character of a one-item format ("f", "<f", "=f", "@f"), 0 otherwise. */
static char format_char(const char* f) {
  if (!f) return 'B';
  if (*f == '<' || *f == '=' || *f == '@') f++;
  return f[0] && !f[1] ? f[0] : 0;
}

static int check_open(ClientObject* self) {
  if (self->c) return 0;
  raise_status(PMX_ERR_FAILED_PRECONDITION, "the client is closed");
  return -1;
}

/* For calls that change what an operation in flight reads (a tensor's push compression,
 * the tensors a resume declares again): none may be running, in any thread. */
static int check_idle(ClientObject* self, const char* what) {
  if (check_open(self) != 0) return -1;
  if (self->inflight == 0 && !self->ops) return 0;
  raise_obj(PMX_ERR_FAILED_PRECONDITION,
            PyUnicode_FromFormat("%s: operations of this client are in flight (%d call(s) in "
                                 "other threads%s); wait for them first", what, self->inflight,
                                 self->ops ? ", an Op not waited for" : ""));
  return -1;
}

/* Around a libparamex call without the GIL: the client cannot be closed meanwhile. The
 * arguments' conversion runs Python code (a key's __hash__, a shape's __index__, another
 * thread given the GIL), which may have closed it since the method's first check_open:
 * the check is repeated here, right before the call. */
#define CALL(self, st, expr)                                                   \
  do {                                                                         \
    if (!(self)->c) {                                                          \
      (st) = PMX_ERR_FAILED_PRECONDITION;                                      \
      snprintf(errbuf, sizeof errbuf, "the client was closed during the call"); \
      break;                                                                   \
    }                                                                          \
    CALL_OPEN(self, st, expr);                                                 \
  } while (0)

/* The same for a client known to be open (an op's wait: close takes the ops first). */
#define CALL_OPEN(self, st, expr)                                              \
  do {                                                                         \
    (self)->inflight++;                                                        \
    PyThreadState* ts_ = PyEval_SaveThread();                                  \
    (st) = (expr);                                                             \
    if ((st) != PMX_OK) snprintf(errbuf, sizeof errbuf, "%s", pmx_last_error()); \
    PyEval_RestoreThread(ts_);                                                 \
    (self)->inflight--;                                                        \
  } while (0)

/* The tensor a key names (a str or a Tensor of this client), borrowed; NULL with an
 * exception. */
static TensorObject* lookup(ClientObject* self, PyObject* key) {
  if (PyObject_TypeCheck(key, &TensorType)) {
    TensorObject* t = (TensorObject*)key;
    if (t->owner != self) {
      invalid("tensor '%U' belongs to another client", t->name);
      return NULL;
    }
    return t;
  }
  if (!PyUnicode_Check(key)) {
    PyErr_Format(PyExc_TypeError, "a tensor is named by a str (or a paramex.Tensor), not %.80s",
                 Py_TYPE(key)->tp_name);
    return NULL;
  }
  PyObject* t = PyDict_GetItemWithError(self->tensors, key);
  if (!t && !PyErr_Occurred()) invalid("tensor '%U' was not declared by this client", key);
  return (TensorObject*)t;
}

/* The buffer of obj for tensor t (elements of dtype, view: the pull's bf16 view), checked:
 * C-contiguous, writable for a pull, the element type, the tensor's shape (or flat with
 * its element count). 0, or -1 with an exception (nothing acquired). */
static int get_view(TensorObject* t, PyObject* obj, bool writable, int view, Py_buffer* v) {
  if (PyObject_GetBuffer(obj, v, PyBUF_RECORDS_RO) != 0) {
    PyErr_Clear();
    PyErr_Format(PyExc_TypeError, "tensor '%U': a %.80s is not an array (it has no buffer "
                 "interface: give a numpy array, a bytearray, a memoryview...)", t->name,
                 Py_TYPE(obj)->tp_name);
    return -1;
  }
  const int d = view == PMX_BF16 && t->dtype == PMX_F32 ? PMX_BF16 : t->dtype;
  const char fc = format_char(v->format);
  const uint64_t numel = t->numel;
  Py_ssize_t ndim = PyTuple_GET_SIZE(t->shape);
  bool shape_ok = v->ndim == 1 && (uint64_t)v->shape[0] == numel;
  if (!shape_ok && v->ndim == ndim) {
    shape_ok = true;
    for (Py_ssize_t i = 0; i < ndim; i++)
      shape_ok &= (uint64_t)v->shape[i] == PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(t->shape, i));
  }
  if (writable && v->readonly)
    invalid("tensor '%U': the array to pull into is read-only", t->name);
  else if (!PyBuffer_IsContiguous(v, 'C'))
    invalid("tensor '%U': the array is not C-contiguous (pass a contiguous copy, e.g. "
            "numpy.ascontiguousarray, and pull into contiguous memory)", t->name);
  else if (fc != dtype_format(d) || v->itemsize != (d == PMX_F32 ? 4 : 2))
    invalid("tensor '%U': the array holds '%s' elements, but the %s %s wants %s ('%c')",
            t->name, v->format ? v->format : "B", d == t->dtype ? "tensor is" : "bf16 view is",
            dtype_name(t->dtype), d == PMX_BF16 ? "bfloat16 words as uint16" : dtype_name(d),
            dtype_format(d));
  else if (!shape_ok) {
    PyObject* got = PyTuple_New(v->ndim);
    for (Py_ssize_t i = 0; got && i < v->ndim; i++)
      PyTuple_SET_ITEM(got, i, PyLong_FromSsize_t(v->shape[i]));
    if (got) invalid("tensor '%U': the array's shape is %R, the tensor's %R (or flat, %llu "
                     "elements)", t->name, got, t->shape, (unsigned long long)numel);
    Py_XDECREF(got);
  } else {
    return 0;
  }
  PyBuffer_Release(v);
  return -1;
}

/* A mapping {name or Tensor: array} into b. 0, or -1 with an exception (b freed). */
static int collect(ClientObject* self, PyObject* mapping, bool writable, int view, batch* b) {
  memset(b, 0, sizeof *b);
  if (!PyDict_Check(mapping)) {
    PyErr_Format(PyExc_TypeError, "want a dict {name: array}, not %.80s",
                 Py_TYPE(mapping)->tp_name);
    return -1;
  }
  /* a snapshot: the keys' __hash__ / __eq__ run Python code, which may change the dict */
  PyObject* items = PyDict_Items(mapping);
  if (!items) return -1;
  Py_ssize_t n = PyList_GET_SIZE(items);
  if (n == 0) {
    Py_DECREF(items);
    invalid("no tensors given");
    return -1;
  }
  b->n = n;
  b->t = PyMem_Calloc((size_t)n, sizeof *b->t);
  b->p = PyMem_Calloc((size_t)n, sizeof *b->p);
  b->views = PyMem_Calloc((size_t)n, sizeof *b->views);
  b->versions = PyMem_Calloc((size_t)n, sizeof *b->versions);
  if (!b->t || !b->p || !b->views || !b->versions) {
    PyErr_NoMemory();
    goto fail;
  }
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject* kv = PyList_GET_ITEM(items, i);
    TensorObject* t = lookup(self, PyTuple_GET_ITEM(kv, 0));
    if (!t || get_view(t, PyTuple_GET_ITEM(kv, 1), writable, view, &b->views[i]) != 0)
      goto fail;
    b->nviews = i + 1;
    for (Py_ssize_t j = 0; j < i; j++)
      if (b->t[j] == t->t) {
        invalid("tensor '%U' is given twice in one call", t->name);
        goto fail;
      }
    b->t[i] = t->t;
    b->p[i] = b->views[i].buf;
  }
  Py_DECREF(items);
  return 0;
fail:
  batch_free(b);
  Py_DECREF(items);
  return -1;
}

static uint64_t lowest(const batch* b) {
  uint64_t m = UINT64_MAX;
  for (Py_ssize_t i = 0; i < b->n; i++)
    if (b->versions[i] < m) m = b->versions[i];
  return m;
}

static int parse_view(PyObject* o, int* view) {
  *view = 0;
  if (!o || o == Py_None) return 0;
  const char* s = PyUnicode_Check(o) ? PyUnicode_AsUTF8(o) : NULL;
  if (s && (strcmp(s, "bfloat16") == 0 || strcmp(s, "bf16") == 0)) {
    *view = PMX_BF16;
    return 0;
  }
  invalid("view: want None or 'bfloat16', not %R", o);
  return -1;
}

/* ---- Tensor ------------------------------------------------------------------------- */

static void Tensor_dealloc(TensorObject* self) {
  Py_XDECREF(self->name);
  Py_XDECREF(self->shape);
  Py_TYPE(self)->tp_free((PyObject*)self);
}

static PyObject* Tensor_repr(TensorObject* self) {
  return PyUnicode_FromFormat("<paramex.Tensor '%U' %s %R>", self->name, dtype_name(self->dtype),
                              self->shape);
}

static PyObject* Tensor_get_name(TensorObject* self, void* x) { return Py_NewRef(self->name); }
static PyObject* Tensor_get_shape(TensorObject* self, void* x) { return Py_NewRef(self->shape); }
static PyObject* Tensor_get_dtype(TensorObject* self, void* x) {
  return PyUnicode_FromString(dtype_name(self->dtype));
}
static PyObject* Tensor_get_numel(TensorObject* self, void* x) {
  return PyLong_FromUnsignedLongLong(self->numel);
}
static PyObject* Tensor_get_nbytes(TensorObject* self, void* x) {
  return PyLong_FromSize_t(self->nbytes);
}
static PyObject* Tensor_get_id(TensorObject* self, void* x) {
  return PyLong_FromUnsignedLong(self->id);
}
static PyObject* Tensor_get_num_chunks(TensorObject* self, void* x) {
  return PyLong_FromUnsignedLong(self->num_chunks);
}

static PyObject* Tensor_set_push_compression(TensorObject* self, PyObject* args, PyObject* kw) {
  static char* kwlist[] = {"mode", "min_bytes", NULL};
  const char* mode;
  Py_ssize_t min_bytes = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "s|n:set_push_compression", kwlist, &mode,
                                   &min_bytes))
    return NULL;
  if (!self->owner) return raise_status(PMX_ERR_FAILED_PRECONDITION, "the client is closed");
  if (check_idle(self->owner, "set_push_compression") != 0) return NULL;
  static const struct { const char* name; pmx_push_mode m; } modes[] = {
      {"raw", PMX_PUSH_RAW}, {"zstd", PMX_PUSH_ZSTD}, {"bf16", PMX_PUSH_BF16},
      {"bf16+zstd", PMX_PUSH_BF16_ZSTD}};
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
    if (strcmp(mode, modes[i].name) == 0) {
      if (min_bytes < 0) return invalid("min_bytes must be >= 0");
      pmx_status st = pmx_tensor_set_push_compression(self->t, modes[i].m, (size_t)min_bytes);
      if (st != PMX_OK) return raise_status(st, pmx_last_error());
      Py_RETURN_NONE;
    }
  return invalid("set_push_compression: mode '%s' is not raw, zstd, bf16 or bf16+zstd", mode);
}

static PyGetSetDef Tensor_getset[] = {
    {"name", (getter)Tensor_get_name, NULL, "the tensor's name", NULL},
    {"shape", (getter)Tensor_get_shape, NULL, "its shape (a tuple)", NULL},
    {"dtype", (getter)Tensor_get_dtype, NULL, "'float32', 'bfloat16' or 'float16'", NULL},
    {"numel", (getter)Tensor_get_numel, NULL, "its number of elements", NULL},
    {"nbytes", (getter)Tensor_get_nbytes, NULL, "its size in bytes", NULL},
    {"id", (getter)Tensor_get_id, NULL, "the server's id of it", NULL},
    {"num_chunks", (getter)Tensor_get_num_chunks, NULL, "chunks it travels in", NULL},
    {NULL}};

static PyMethodDef Tensor_methods[] = {
    {"set_push_compression", (PyCFunction)(void (*)(void))Tensor_set_push_compression,
     METH_VARARGS | METH_KEYWORDS,
     "set_push_compression(mode, min_bytes=0): how pushes send it: 'raw', 'zstd', 'bf16' or "
     "'bf16+zstd', for chunks of tensors of at least min_bytes"},
    {NULL}};

static PyTypeObject TensorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "paramex.Tensor",
    .tp_basicsize = sizeof(TensorObject),
    .tp_dealloc = (destructor)Tensor_dealloc,
    .tp_repr = (reprfunc)Tensor_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A declared tensor (Client.declare); valid while its client is open.",
    .tp_getset = Tensor_getset,
    .tp_methods = Tensor_methods,
};

/* ---- Op ----------------------------------------------------------------------------- */

static void op_unlink(OpObject* op) {
  ClientObject* c = op->owner;
  if (op->prev) op->prev->next = op->next;
  else if (c && c->ops == op) c->ops = op->next;
  if (op->next) op->next->prev = op->prev;
  op->next = op->prev = NULL;
}

/* Waits (without the GIL) unless done; keeps the result. */
static void op_finish(OpObject* self) {
  if (!self->op) return;
  pmx_op* op = self->op;
  self->op = NULL;
  self->waiting = true;
  pmx_status st;
  char errbuf[512] = "";
  CALL_OPEN(self->owner, st, pmx_op_wait(op));
  self->status = st;
  self->waiting = false;
  snprintf(self->error, sizeof self->error, "%s", errbuf);
  op_unlink(self);
  for (Py_ssize_t i = 0; i < self->b.nviews; i++) PyBuffer_Release(&self->b.views[i]);
  self->b.nviews = 0;
}

static PyObject* Op_wait(OpObject* self, PyObject* x) {
  if (self->waiting) {
    PyErr_SetString(PyExc_RuntimeError, "Op.wait: another thread is waiting for this operation");
    return NULL;
  }
  op_finish(self);
  if (self->status != PMX_OK) return raise_status(self->status, self->error);
  if (self->pull) return PyLong_FromUnsignedLongLong(lowest(&self->b));
  Py_RETURN_NONE;
}

static void Op_dealloc(OpObject* self) {
  op_finish(self); /* the buffers stay valid until libparamex is done with them */
  batch_free(&self->b);
  Py_XDECREF(self->owner);
  Py_TYPE(self)->tp_free((PyObject*)self);
}

static PyMethodDef Op_methods[] = {
    {"wait", (PyCFunction)Op_wait, METH_NOARGS,
     "wait(): waits for the operation (without the GIL); returns what the blocking form "
     "returns (a pull: the lowest version pulled) or raises its paramex.Error. Again after "
     "the first time: the same result."},
    {NULL}};

static PyTypeObject OpType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "paramex.Op",
    .tp_basicsize = sizeof(OpObject),
    .tp_dealloc = (destructor)Op_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "An operation started by push_async or pull_async. It holds its arrays until "
              "it is waited for; dropping it waits.",
    .tp_methods = Op_methods,
};

/* ---- Client ------------------------------------------------------------------------- */

/* str, or a list/tuple of str joined by ',' (a new reference), or None. */
static PyObject* servers_str(PyObject* o) {
  if (o == Py_None || PyUnicode_Check(o)) return Py_NewRef(o);
  if (PyList_Check(o) || PyTuple_Check(o)) {
    PyObject* comma = PyUnicode_FromString(",");
    PyObject* s = comma ? PyUnicode_Join(comma, o) : NULL;
    Py_XDECREF(comma);
    return s;
  }
  PyErr_Format(PyExc_TypeError, "servers: want 'HOST:PORT', a list of them or None, not %.80s",
               Py_TYPE(o)->tp_name);
  return NULL;
}

static int64_t ms_of(PyObject* o, const char* what, int* err) {
  if (!o || o == Py_None) return 0;
  double s = PyFloat_AsDouble(o);
  if (s == -1.0 && PyErr_Occurred()) {
    *err = 1;
    return 0;
  }
  if (!(s > 0) || s > 1e9) {
    invalid("%s: want seconds > 0, not %R", what, o);
    *err = 1;
    return 0;
  }
  int64_t ms = (int64_t)(s * 1000.0 + 0.5);
  return ms > 0 ? ms : 1;
}

static int Client_init(ClientObject* self, PyObject* args, PyObject* kw) {
  static char* kwlist[] = {"servers", "rank", "world_size", "timeout", "connect_timeout",
                           "retry_timeout", "compression", "tls_ca", "tls_cert", "tls_key",
                           "tls_server_name", "token", "token_file", NULL};
  PyObject *servers = Py_None, *rank = Py_None, *world = Py_None, *timeout = NULL,
           *connect_timeout = NULL, *retry_timeout = NULL;
  const char *compression = NULL, *ca = NULL, *cert = NULL, *key = NULL, *name = NULL,
             *token = NULL, *token_file = NULL;
  if (self->c || self->tensors) {
    PyErr_SetString(PyExc_RuntimeError, "Client.__init__ called twice (a client connects once)");
    return -1;
  }
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|OOO$OOOzzzzzzz:Client", kwlist, &servers, &rank,
                                   &world, &timeout, &connect_timeout, &retry_timeout,
                                   &compression, &ca, &cert, &key, &name, &token, &token_file))
    return -1;
  uint32_t r = PMX_FROM_ENV, w = PMX_FROM_ENV;
  if (rank != Py_None) {
    unsigned long v = PyLong_AsUnsignedLong(rank);
    if (PyErr_Occurred() || v >= PMX_FROM_ENV) {
      PyErr_Clear();
      invalid("rank: want an int >= 0 or None, not %R", rank);
      return -1;
    }
    r = (uint32_t)v;
  }
  if (world != Py_None) {
    unsigned long v = PyLong_AsUnsignedLong(world);
    if (PyErr_Occurred() || v < 1 || v >= PMX_FROM_ENV) {
      PyErr_Clear();
      invalid("world_size: want an int >= 1 or None, not %R", world);
      return -1;
    }
    w = (uint32_t)v;
  }
  int err = 0;
  pmx_options o = {0};
  o.timeout_ms = ms_of(timeout, "timeout", &err);
  if (!err) o.connect_timeout_ms = ms_of(connect_timeout, "connect_timeout", &err);
  if (!err) o.retry_timeout_ms = ms_of(retry_timeout, "retry_timeout", &err);
  if (err) return -1;
  if (compression) {
    if (strcmp(compression, "auto") == 0) o.compression = PMX_COMPRESSION_AUTO;
    else if (strcmp(compression, "on") == 0) o.compression = PMX_COMPRESSION_ON;
    else if (strcmp(compression, "off") == 0) o.compression = PMX_COMPRESSION_OFF;
    else {
      invalid("compression: want 'auto', 'on' or 'off', not '%s'", compression);
      return -1;
    }
  }
  o.tls_ca_file = ca;
  o.tls_cert_file = cert;
  o.tls_key_file = key;
  o.tls_server_name = name;
  o.token = token;
  o.token_file = token_file;
  PyObject* list = servers_str(servers);
  if (!list) return -1;
  const char* addr = list == Py_None ? NULL : PyUnicode_AsUTF8(list);
  if (list != Py_None && !addr) {
    Py_DECREF(list);
    return -1;
  }
  self->tensors = PyDict_New();
  if (!self->tensors) {
    Py_DECREF(list);
    return -1;
  }
  pmx_status st;
  char errbuf[512] = "";
  pmx_client* c = NULL;
  pmx_join_info info = {0};
  Py_BEGIN_ALLOW_THREADS
  st = pmx_connect(addr, &o, &c);
  if (st == PMX_OK) {
    st = pmx_join(c, r, w, &info);
    if (st != PMX_OK) {
      snprintf(errbuf, sizeof errbuf, "%s", pmx_last_error());
      pmx_client_abort(c);
      c = NULL;
    }
  } else {
    snprintf(errbuf, sizeof errbuf, "%s", pmx_last_error());
  }
  Py_END_ALLOW_THREADS
  Py_DECREF(list);
  if (st != PMX_OK) {
    raise_status(st, errbuf);
    return -1;
  }
  self->c = c;
  self->rank = info.worker_id;
  self->world = info.world_size;
  self->worker_id = info.worker_id;
  self->incarnation = info.incarnation;
  return 0;
}

/* Closes the client. Its pending ops are taken first, with the GIL held, so that no other
 * thread's Op.wait or Op dealloc reaches a pmx_op that the close frees. A close waits for
 * the pending pushes (without the GIL): a push keeps its real result (one the server
 * applied is not reported as cancelled). The pending pulls are cancelled (one may wait on
 * the server for a version nobody will push), and so is everything on an abort. Their
 * arrays are released only once libparamex is done with them. */
static void close_client(ClientObject* self, bool abort) {
  if (!self->c) return;
  pmx_client* c = self->c;
  self->c = NULL;
  OpObject* taken = self->ops; /* still chained through next; held until the end */
  self->ops = NULL;
  for (OpObject* o = taken; o; o = o->next) {
    Py_INCREF(o);
    o->waiting = true; /* another thread's Op.wait raises until the close returns */
  }
  Py_BEGIN_ALLOW_THREADS
  for (OpObject* o = taken; o && !abort; o = o->next)
    if (!o->pull) {
      o->status = pmx_op_wait(o->op);
      snprintf(o->error, sizeof o->error, "%s", o->status ? pmx_last_error() : "");
      o->op = NULL;
    }
  if (abort) pmx_client_abort(c); /* frees the ops not waited for: they end cancelled */
  else pmx_client_destroy(c);
  Py_END_ALLOW_THREADS
  while (taken) {
    OpObject* o = taken;
    taken = o->next;
    o->next = o->prev = NULL;
    if (o->op) { /* freed by the close */
      o->op = NULL;
      o->status = PMX_ERR_CANCELLED;
      snprintf(o->error, sizeof o->error, "the client was %s before the %s was waited for",
               abort ? "aborted" : "closed", o->pull ? "pull" : "push");
    }
    o->waiting = false;
    for (Py_ssize_t j = 0; j < o->b.nviews; j++) PyBuffer_Release(&o->b.views[j]);
    o->b.nviews = 0;
    Py_DECREF(o);
  }
}

static PyObject* Client_close(ClientObject* self, PyObject* args, PyObject* kw) {
  static char* kwlist[] = {"abort", NULL};
  int abort = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|$p:close", kwlist, &abort)) return NULL;
  if (self->inflight > 0) {
    PyErr_Format(PyExc_RuntimeError, "close: %d call(s) of this client are running in other "
                 "threads; close it after they returned", self->inflight);
    return NULL;
  }
  close_client(self, abort);
  Py_RETURN_NONE;
}

static void Client_dealloc(ClientObject* self) {
  close_client(self, false);
  if (self->tensors) { /* tensors that outlive their client say it is closed */
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(self->tensors, &pos, &k, &v)) ((TensorObject*)v)->owner = NULL;
  }
  Py_XDECREF(self->tensors);
  Py_TYPE(self)->tp_free((PyObject*)self);
}

/* shape from an int or a sequence of ints into dims; ndim or -1 with an exception. */
static int parse_shape(PyObject* o, uint64_t* dims) {
  PyObject* seq = PyLong_Check(o) ? PyTuple_Pack(1, o) : PySequence_Tuple(o);
  if (!seq) {
    PyErr_Clear();
    PyErr_Format(PyExc_TypeError, "declare: want an array or a shape (an int or a tuple of "
                 "ints), not %.80s", Py_TYPE(o)->tp_name);
    return -1;
  }
  Py_ssize_t n = PyTuple_GET_SIZE(seq);
  if (n < 1 || n > 8) {
    Py_DECREF(seq);
    invalid("declare: a shape has 1..8 dimensions, not %zd", n);
    return -1;
  }
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject* d = PyTuple_GET_ITEM(seq, i);
    unsigned long long v = PyLong_Check(d) ? PyLong_AsUnsignedLongLong(d) : 0;
    if (PyErr_Occurred() || v < 1) {
      PyErr_Clear();
      invalid("declare: dimension %zd of shape %R is not an int >= 1", i, seq);
      Py_DECREF(seq);
      return -1;
    }
    dims[i] = v;
  }
  Py_DECREF(seq);
  return (int)n;
}

static PyObject* Client_declare(ClientObject* self, PyObject* args, PyObject* kw) {
  static char* kwlist[] = {"name", "array_or_shape", "dtype", "init", NULL};
  PyObject *name, *what, *init = Py_None;
  int dtype = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|i$O:declare", kwlist, &name, &what, &dtype,
                                   &init))
    return NULL;
  if (!PyUnicode_Check(name)) {
    PyErr_Format(PyExc_TypeError, "declare: a tensor's name is a str, not %.80s",
                 Py_TYPE(name)->tp_name);
    return NULL;
  }
  if (check_open(self) != 0) return NULL;
  const char* cname = PyUnicode_AsUTF8(name);
  if (!cname) return NULL;
  uint64_t dims[8];
  int ndim;
  Py_buffer v = {0};
  bool have_values = PyObject_CheckBuffer(what);
  pmx_init in = {.kind = PMX_INIT_ZEROS};
  if (have_values) {
    if (init != Py_None) return invalid("declare: give initial values or init, not both");
    if (PyObject_GetBuffer(what, &v, PyBUF_RECORDS_RO) != 0) return NULL;
    char fc = format_char(v.format);
    int d = fc == 'f' && v.itemsize == 4 ? PMX_F32 : fc == 'e' && v.itemsize == 2 ? PMX_F16
            : fc == 'H' && v.itemsize == 2 ? PMX_BF16 : 0;
    if (!PyBuffer_IsContiguous(&v, 'C') || v.ndim < 1 || v.ndim > 8 || !d ||
        (dtype && dtype != d && !(d == PMX_BF16 && dtype == PMX_BF16))) {
      invalid("declare '%s': the values must be a C-contiguous array of 1..8 dimensions of "
              "float32, float16 or (uint16 words) bfloat16%s; got format '%s', %d dimension(s)",
              cname, dtype ? " matching dtype" : "", v.format ? v.format : "B", v.ndim);
      PyBuffer_Release(&v);
      return NULL;
    }
    if (d == PMX_BF16 && dtype != PMX_BF16) {
      invalid("declare '%s': uint16 values are bfloat16 words only with dtype='bfloat16'",
              cname);
      PyBuffer_Release(&v);
      return NULL;
    }
    dtype = d;
    ndim = v.ndim;
    for (int i = 0; i < ndim; i++) dims[i] = (uint64_t)v.shape[i];
  } else {
    if ((ndim = parse_shape(what, dims)) < 0) return NULL;
    if (!dtype) dtype = PMX_F32;
    if (init != Py_None) {
      int kind;
      double a, b;
      PyObject* seed_o;
      if (!PyTuple_Check(init) || !PyArg_ParseTuple(init, "iddO", &kind, &a, &b, &seed_o)) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "declare: init is a paramex initializer "
                        "(paramex.zeros(), constant(), normal(), uniform())");
        return NULL;
      }
      unsigned long long seed = PyLong_Check(seed_o) ? PyLong_AsUnsignedLongLong(seed_o) : 0;
      if (PyErr_Occurred() || !PyLong_Check(seed_o)) {
        PyErr_Clear();
        return invalid("declare: an initializer's seed is an int in 0..2**64-1, not %R", seed_o);
      }
      if (kind < PMX_INIT_ZEROS || kind > PMX_INIT_UNIFORM || !isfinite(a) || !isfinite(b) ||
          fabs(a) > FLT_MAX || fabs(b) > FLT_MAX)
        return invalid("declare: init %R is not a paramex initializer of finite float32 "
                       "parameters", init);
      in = (pmx_init){.kind = (pmx_init_kind)kind, .a = (float)a, .b = (float)b, .seed = seed};
    }
  }
  if (dtype != PMX_F32 && dtype != PMX_BF16 && dtype != PMX_F16) {
    if (have_values) PyBuffer_Release(&v);
    return invalid("declare: dtype %d is not float32, bfloat16 or float16", dtype);
  }
  /* the object first: no MemoryError after the server declared it */
  TensorObject* to = PyObject_New(TensorObject, &TensorType);
  PyObject* shape = PyTuple_New(ndim);
  for (int i = 0; shape && i < ndim; i++) {
    PyObject* d = PyLong_FromUnsignedLongLong(dims[i]);
    if (!d) Py_CLEAR(shape);
    else PyTuple_SET_ITEM(shape, i, d);
  }
  if (to) {
    to->owner = NULL;
    to->name = Py_NewRef(name);
    to->shape = shape;
  } else {
    Py_XDECREF(shape);
  }
  if (!to || !shape) {
    if (have_values) PyBuffer_Release(&v);
    Py_XDECREF(to);
    return NULL;
  }
  pmx_tensor* t = NULL;
  pmx_status st;
  char errbuf[512] = "";
  CALL(self, st, pmx_declare(self->c, cname, (pmx_dtype)dtype, dims, (size_t)ndim,
                             have_values ? v.buf : NULL, have_values ? NULL : &in, &t));
  if (have_values) PyBuffer_Release(&v);
  PyObject* known = st == PMX_OK ? PyDict_GetItemWithError(self->tensors, name) : NULL;
  if (st != PMX_OK || known || PyErr_Occurred()) {
    Py_DECREF(to);
    if (st != PMX_OK) return raise_status(st, errbuf);
    return known ? Py_NewRef(known) : NULL; /* known: the same tensor again */
  }
  to->owner = self;
  to->t = t;
  to->numel = pmx_tensor_numel(t);
  to->nbytes = pmx_tensor_bytes(t);
  to->id = pmx_tensor_id(t);
  to->num_chunks = pmx_tensor_num_chunks(t);
  to->dtype = dtype;
  if (PyDict_SetItem(self->tensors, name, (PyObject*)to) != 0) {
    Py_DECREF(to);
    return NULL;
  }
  return (PyObject*)to; /* the dict holds the other reference */
}

static int parse_step(PyObject* o, const char* what, uint64_t* v) {
  *v = PyLong_Check(o) ? PyLong_AsUnsignedLongLong(o) : (unsigned long long)-1;
  if (PyErr_Occurred() || !PyLong_Check(o)) {
    PyErr_Clear();
    invalid("%s: want an int >= 0, not %R", what, o);
    return -1;
  }
  return 0;
}

static PyObject* Client_push(ClientObject* self, PyObject* args) {
  PyObject *step_o, *grads;
  uint64_t step;
  batch b;
  if (!PyArg_ParseTuple(args, "OO:push", &step_o, &grads) || check_open(self) != 0 ||
      parse_step(step_o, "push: step", &step) != 0 || collect(self, grads, false, 0, &b) != 0)
    return NULL;
  pmx_status st;
  char errbuf[512] = "";
  CALL(self, st, pmx_push(self->c, step, (size_t)b.n, b.t, (const void* const*)b.p));
  batch_free(&b);
  if (st != PMX_OK) return raise_status(st, errbuf);
  Py_RETURN_NONE;
}

static PyObject* Client_pull(ClientObject* self, PyObject* args, PyObject* kw) {
  static char* kwlist[] = {"version", "out", "view", NULL};
  PyObject *ver_o, *out, *view_o = NULL;
  uint64_t version;
  int view;
  batch b;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$O:pull", kwlist, &ver_o, &out, &view_o) ||
      check_open(self) != 0 || parse_step(ver_o, "pull: version", &version) != 0 ||
      parse_view(view_o, &view) != 0 || collect(self, out, true, view, &b) != 0)
    return NULL;
  pmx_status st;
  char errbuf[512] = "";
  CALL(self, st, pmx_pull_as(self->c, (size_t)b.n, b.t, b.p, (pmx_dtype)view, version,
                             b.versions));
  uint64_t v = lowest(&b);
  batch_free(&b);
  if (st != PMX_OK) return raise_status(st, errbuf);
  return PyLong_FromUnsignedLongLong(v);
}

static PyObject* Client_push_pull(ClientObject* self, PyObject* args, PyObject* kw) {
  static char* kwlist[] = {"step", "grads", "out", "view", NULL};
  PyObject *step_o, *grads, *out, *view_o = NULL;
  uint64_t step;
  int view;
  batch g, p;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|$O:push_pull", kwlist, &step_o, &grads, &out,
                                   &view_o) ||
      check_open(self) != 0 || parse_step(step_o, "push_pull: step", &step) != 0 ||
      parse_view(view_o, &view) != 0 || collect(self, grads, false, 0, &g) != 0)
    return NULL;
  if (collect(self, out, true, view, &p) != 0) {
    batch_free(&g);
    return NULL;
  }
  /* the same tensors in the same order: the C call takes one list */
  bool same = g.n == p.n;
  for (Py_ssize_t i = 0; same && i < g.n; i++) same = g.t[i] == p.t[i];
  if (!same) {
    batch_free(&g);
    batch_free(&p);
    return invalid("push_pull: grads and out must name the same tensors in the same order");
  }
  pmx_status st;
  char errbuf[512] = "";
  CALL(self, st, pmx_push_pull_as(self->c, step, (size_t)g.n, g.t, (const void* const*)g.p,
                                  p.p, (pmx_dtype)view, p.versions));
  uint64_t v = lowest(&p);
  batch_free(&g);
  batch_free(&p);
  if (st != PMX_OK) return raise_status(st, errbuf);
  return PyLong_FromUnsignedLongLong(v);
}

/* The Op of an async call, made before the call (so that no MemoryError comes after the
 * server saw it); it owns b from here. NULL with an exception (b freed). The open check is
 * repeated: collecting b ran Python code. */
static OpObject* new_op(ClientObject* self, batch* b, bool pull) {
  OpObject* o = check_open(self) == 0 ? PyObject_New(OpObject, &OpType) : NULL;
  if (!o) {
    batch_free(b);
    return NULL;
  }
  o->owner = (ClientObject*)Py_NewRef(self);
  o->op = NULL;
  o->b = *b;
  o->pull = pull;
  o->waiting = false;
  o->status = PMX_OK;
  o->error[0] = 0;
  o->prev = o->next = NULL;
  return o;
}

/* After the async call: the started op is linked into the client's pending list. */
static PyObject* start_op(ClientObject* self, OpObject* o, pmx_status st) {
  if (st != PMX_OK) {
    char errbuf[512];
    snprintf(errbuf, sizeof errbuf, "%s", pmx_last_error());
    Py_DECREF(o); /* o->op is NULL: frees the arrays */
    return raise_status(st, errbuf);
  }
  o->next = self->ops;
  if (self->ops) self->ops->prev = o;
  self->ops = o;
  return (PyObject*)o;
}

static PyObject* Client_push_async(ClientObject* self, PyObject* args) {
  PyObject *step_o, *grads;
  uint64_t step;
  batch b;
  if (!PyArg_ParseTuple(args, "OO:push_async", &step_o, &grads) || check_open(self) != 0 ||
      parse_step(step_o, "push_async: step", &step) != 0 ||
      collect(self, grads, false, 0, &b) != 0)
    return NULL;
  OpObject* o = new_op(self, &b, false);
  if (!o) return NULL;
  return start_op(self, o, pmx_push_async(self->c, step, (size_t)o->b.n, o->b.t,
                                          (const void* const*)o->b.p, &o->op));
}

static PyObject* Client_pull_async(ClientObject* self, PyObject* args, PyObject* kw) {
  static char* kwlist[] = {"version", "out", "view", NULL};
  PyObject *ver_o, *out, *view_o = NULL;
  uint64_t version;
  int view;
  batch b;
  if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$O:pull_async", kwlist, &ver_o, &out,
                                   &view_o) ||
      check_open(self) != 0 || parse_step(ver_o, "pull_async: version", &version) != 0 ||
      parse_view(view_o, &view) != 0 || collect(self, out, true, view, &b) != 0)
    return NULL;
  OpObject* o = new_op(self, &b, true);
  if (!o) return NULL;
  return start_op(self, o, pmx_pull_as_async(self->c, (size_t)o->b.n, o->b.t, o->b.p,
                                             (pmx_dtype)view, version, o->b.versions, &o->op));
}

static PyObject* Client_resume(ClientObject* self, PyObject* args) {
  PyObject* out;
  batch b;
  if (!PyArg_ParseTuple(args, "O:resume", &out) || check_idle(self, "resume") != 0 ||
      collect(self, out, true, 0, &b) != 0)
    return NULL;
  uint64_t step = 0;
  pmx_status st;
  char errbuf[512] = "";
  if (check_idle(self, "resume") != 0) { /* again: collect ran Python code */
    batch_free(&b);
    return NULL;
  }
  CALL(self, st, pmx_resume(self->c, (size_t)b.n, b.t, b.p, &step));
  batch_free(&b);
  if (st != PMX_OK) return raise_status(st, errbuf);
  return PyLong_FromUnsignedLongLong(step);
}

static PyObject* Client_stats(ClientObject* self, PyObject* x) {
  if (check_open(self) != 0) return NULL;
  pmx_client_stats s;
  pmx_client_get_stats(self->c, &s);
  return Py_BuildValue("{sKsKsKsKsKsKsKsKsO}", "push_chunks", s.push_chunks, "push_raw_bytes",
                       s.push_raw_bytes, "push_wire_bytes", s.push_wire_bytes, "pull_chunks",
                       s.pull_chunks, "pull_raw_bytes", s.pull_raw_bytes, "pull_wire_bytes",
                       s.pull_wire_bytes, "pull_unchanged_chunks", s.pull_unchanged_chunks,
                       "checksum_failures", s.checksum_failures, "compressed_pulls",
                       s.compressed_pulls ? Py_True : Py_False);
}

static PyObject* Client_tensor(ClientObject* self, PyObject* name) {
  if (check_open(self) != 0) return NULL;
  TensorObject* t = lookup(self, name);
  return t ? Py_NewRef((PyObject*)t) : NULL;
}

static PyObject* Client_get_rank(ClientObject* self, void* x) {
  return PyLong_FromUnsignedLong(self->rank);
}
static PyObject* Client_get_world(ClientObject* self, void* x) {
  return PyLong_FromUnsignedLong(self->world);
}
static PyObject* Client_get_incarnation(ClientObject* self, void* x) {
  return PyLong_FromUnsignedLongLong(self->incarnation);
}
static PyObject* Client_get_closed(ClientObject* self, void* x) {
  return PyBool_FromLong(self->c == NULL);
}
static PyObject* Client_get_tensors(ClientObject* self, void* x) {
  if (!self->tensors) return raise_status(PMX_ERR_FAILED_PRECONDITION, "the client is closed");
  return PyDictProxy_New(self->tensors);
}

static PyGetSetDef Client_getset[] = {
    {"rank", (getter)Client_get_rank, NULL, "this worker's rank", NULL},
    {"world_size", (getter)Client_get_world, NULL, "the number of workers", NULL},
    {"incarnation", (getter)Client_get_incarnation, NULL, "this join's incarnation", NULL},
    {"closed", (getter)Client_get_closed, NULL, "whether close() was called", NULL},
    {"tensors", (getter)Client_get_tensors, NULL, "the declared tensors by name", NULL},
    {NULL}};

static PyMethodDef Client_methods[] = {
    {"declare", (PyCFunction)(void (*)(void))Client_declare, METH_VARARGS | METH_KEYWORDS, 
     "declare(name, array_or_shape, dtype=0, *, init=None)\n--\n\nDeclares a tensor (paramex.Client.declare documents it)."},
    {"push", (PyCFunction)Client_push, METH_VARARGS, 
     "push(step, grads)\n--\n\nPushes this worker's gradients for step: grads is a dict {name or Tensor: array}. Returns once the server acknowledged every chunk; a retried push of a step already counted is not counted twice."},
    {"pull", (PyCFunction)(void (*)(void))Client_pull, METH_VARARGS | METH_KEYWORDS, 
     "pull(version, out, *, view=None)\n--\n\nPulls every tensor of the dict out into its array (in place), waiting until it reached version. Returns the lowest version pulled. view='bfloat16': f32 tensors as bf16 words, into uint16 arrays."},
    {"push_pull", (PyCFunction)(void (*)(void))Client_push_pull, METH_VARARGS | METH_KEYWORDS,
     
     "push_pull(step, grads, out, *, view=None)\n--\n\nThe push of step and the pull of version step + 1, at about one round trip. grads and out name the same tensors in the same order. Returns the version pulled."},
    {"push_async", (PyCFunction)Client_push_async, METH_VARARGS, 
     "push_async(step, grads)\n--\n\nStarts a push and returns an Op. The arrays are held (and must not change) until Op.wait() returned."},
    {"pull_async", (PyCFunction)(void (*)(void))Client_pull_async, METH_VARARGS | METH_KEYWORDS,
     
     "pull_async(version, out, *, view=None)\n--\n\nStarts a pull and returns an Op whose wait() returns the version pulled. The arrays are held until then."},
    {"resume", (PyCFunction)Client_resume, METH_VARARGS, 
     "resume(out)\n--\n\nAfter paramex.Aborted, or at a worker's start: joins again where needed, declares again every tensor the server lost, pulls every tensor of out in full at the server's version and returns the step to compute next."},
    {"stats", (PyCFunction)Client_stats, METH_NOARGS, 
     "stats()\n--\n\nThis client's counters since it connected: chunks and bytes pushed and pulled, raw and on the wire."},
    {"tensor", (PyCFunction)Client_tensor, METH_O, 
     "tensor(name, /)\n--\n\nThe declared Tensor of that name (InvalidArgument when none)."},
    {"close", (PyCFunction)(void (*)(void))Client_close, METH_VARARGS | METH_KEYWORDS, 
     "close(*, abort=False)\n--\n\nLeaves (abort=True: only drops the connection; the worker is then reported dead, not finished) and frees the client. Pending Ops end Cancelled; later calls raise FailedPrecondition."},
    {NULL}};

static PyTypeObject ClientType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "paramex._paramex.Client",
    .tp_basicsize = sizeof(ClientObject),
    .tp_dealloc = (destructor)Client_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "libparamex's client (paramex.Client documents it).",
    .tp_getset = Client_getset,
    .tp_methods = Client_methods,
    .tp_init = (initproc)Client_init,
    .tp_new = PyType_GenericNew,
};

/* ---- module ------------------------------------------------------------------------- */

static PyObject* mod_set_errors(PyObject* m, PyObject* args) {
  PyObject *base, *by_status;
  if (!PyArg_ParseTuple(args, "OO!:_set_errors", &base, &PyDict_Type, &by_status)) return NULL;
  Py_XSETREF(g_error, Py_NewRef(base));
  Py_XSETREF(g_errors, Py_NewRef(by_status));
  Py_RETURN_NONE;
}

static PyObject* mod_env_rank(PyObject* m, PyObject* x) {
  uint32_t r, w;
  pmx_status st = pmx_env_rank(&r, &w);
  if (st != PMX_OK) return raise_status(st, pmx_last_error());
  PyObject* ro = r == PMX_FROM_ENV ? Py_NewRef(Py_None) : PyLong_FromUnsignedLong(r);
  PyObject* wo = w == PMX_FROM_ENV ? Py_NewRef(Py_None) : PyLong_FromUnsignedLong(w);
  return Py_BuildValue("(NN)", ro, wo);
}

static PyObject* mod_strerror(PyObject* m, PyObject* arg) {
  long st = PyLong_AsLong(arg);
  if (st == -1 && PyErr_Occurred()) return NULL;
  return PyUnicode_FromString(pmx_strerror((pmx_status)st));
}

static PyMethodDef module_methods[] = {
    {"_set_errors", mod_set_errors, METH_VARARGS, NULL},
    {"env_rank", mod_env_rank, METH_NOARGS, NULL},
    {"strerror", mod_strerror, METH_O, NULL},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_paramex",
                                    "libparamex for Python (see the paramex package).", -1,
                                    module_methods};

PyMODINIT_FUNC PyInit__paramex(void); /* the interpreter finds it by name */
PyMODINIT_FUNC PyInit__paramex(void) {
  if (PyType_Ready(&ClientType) < 0 || PyType_Ready(&TensorType) < 0 ||
      PyType_Ready(&OpType) < 0)
    return NULL;
  PyObject* m = PyModule_Create(&module);
  if (!m) return NULL;
  if (PyModule_AddObjectRef(m, "Client", (PyObject*)&ClientType) < 0 ||
      PyModule_AddObjectRef(m, "Tensor", (PyObject*)&TensorType) < 0 ||
      PyModule_AddObjectRef(m, "Op", (PyObject*)&OpType) < 0 ||
      PyModule_AddStringConstant(m, "library_version", pmx_version()) < 0 ||
      PyModule_AddIntConstant(m, "FLOAT32", PMX_F32) < 0 ||
      PyModule_AddIntConstant(m, "BFLOAT16", PMX_BF16) < 0 ||
      PyModule_AddIntConstant(m, "FLOAT16", PMX_F16) < 0) {
    Py_DECREF(m);
    return NULL;
  }
  return m;
}
