/*
 * cumem._C — the CPython binding of the cumem core (include/cumem.h).
 *
 * The core is not compiled in: this extension links libcumem.so.0, found
 * beside it through an $ORIGIN rpath, the one copy of the core in the process
 * that cumem.cumem_allocator and the LD_PRELOAD interposer link too. That
 * library also exports the PyTorch entry points cumem_torch_malloc and
 * cumem_torch_free: CUDAPluggableAllocator(_C.LIBRARY, ...) loads them from
 * there, and they share this module's process-wide default instance.
 *
 * What is here: error translation (CumemError), tag lists, the Instance type
 * (one cumem_t), and a few module functions (current tag, last error). All
 * policy (which tags to sleep, pools, PyTorch) is in the Python glue.
 *
 * The GIL is released around every call that may wait on the device or copy
 * memory, so that other Python threads (and PyTorch allocations, which enter
 * the core without Python) keep running.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "cumem.h"
#include "cumem_backend.h"
#include "cumem_testing.h" /* Instance(fault=True), for tests */

#include <dlfcn.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

/* ---- errors ------------------------------------------------------------ */

static PyObject *CumemError;    /* cumem.CumemError(RuntimeError), has .code */
static PyObject *CumemOOMError; /* cumem.CumemOutOfMemoryError(CumemError) */

/* Raise the error for `code` from the call `what`: "what: CUMEM_E...: meaning
 * (detail)". The detail is this thread's cumem_last_error(), read right after
 * the failing call, which ran on this same thread. Returns NULL. */
static PyObject *raise_cumem(int code, const char *what) {
  PyObject *type = code == CUMEM_ENOMEM ? CumemOOMError : CumemError;
  const char *detail = cumem_last_error();
  PyObject *msg = detail[0]
      ? PyUnicode_FromFormat("%s: %s (%s)", what, cumem_strerror(code), detail)
      : PyUnicode_FromFormat("%s: %s", what, cumem_strerror(code));
  if (!msg) return NULL;
  PyObject *exc = PyObject_CallFunctionObjArgs(type, msg, NULL);
  Py_DECREF(msg);
  if (!exc) return NULL;
  PyObject *pycode = PyLong_FromLong(code);
  if (!pycode || PyObject_SetAttrString(exc, "code", pycode) < 0) {
    Py_XDECREF(pycode);
    Py_DECREF(exc);
    return NULL;
  }
  Py_DECREF(pycode);
  PyErr_SetObject(type, exc);
  Py_DECREF(exc);
  return NULL;
}

/* ---- argument helpers -------------------------------------------------- */

/* "O&" converter: a non-negative Python int that is an address. */
static int conv_addr(PyObject *obj, void *out) {
  if (!PyLong_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "an address must be an int, not %.100s",
                 Py_TYPE(obj)->tp_name);
    return 0;
  }
  unsigned long long v = PyLong_AsUnsignedLongLong(obj);
  if (v == (unsigned long long)-1 && PyErr_Occurred()) return 0;
  *(void **)out = (void *)(uintptr_t)v;
  return 1;
}

/* "O&" converter: None or an address (a CUstream / cudaStream_t as an int,
 * e.g. torch.cuda.current_stream().cuda_stream). */
typedef struct {
  int given;
  void *stream;
} opt_stream_t;

static int conv_opt_stream(PyObject *obj, void *out) {
  opt_stream_t *s = out;
  s->given = 0;
  s->stream = NULL;
  if (obj == Py_None) return 1;
  s->given = 1;
  return conv_addr(obj, &s->stream);
}

/* "O&" converter: None or a str, to a C string valid while the str lives (the
 * caller's argument tuple keeps it alive for the call). */
static int conv_opt_str(PyObject *obj, void *out) {
  if (obj == Py_None) {
    *(const char **)out = NULL;
    return 1;
  }
  if (!PyUnicode_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "expected a str or None, not %.100s",
                 Py_TYPE(obj)->tp_name);
    return 0;
  }
  const char *s = PyUnicode_AsUTF8(obj);
  if (!s) return 0;
  *(const char **)out = s;
  return 1;
}

/* A tag list for the core: None -> NULL; a str -> that one tag; an iterable
 * of str -> those tags. The strings stay alive through `keep` (owned) until
 * taglist_clear, so the list may be used with the GIL released. */
typedef struct {
  PyObject *keep;
  const char **v; /* NULL-terminated, or NULL for "None" */
} taglist_t;

static void taglist_clear(taglist_t *tl) {
  PyMem_Free((void *)tl->v);
  Py_CLEAR(tl->keep);
  tl->v = NULL;
}

static int taglist_from(PyObject *obj, taglist_t *tl, const char *argname) {
  tl->keep = NULL;
  tl->v = NULL;
  if (obj == NULL || obj == Py_None) return 0;
  if (PyUnicode_Check(obj))
    tl->keep = PyTuple_Pack(1, obj);
  else
    tl->keep = PySequence_Tuple(obj);
  if (!tl->keep) {
    if (PyErr_ExceptionMatches(PyExc_TypeError)) {
      PyErr_Clear();
      PyErr_Format(PyExc_TypeError,
                   "%s must be None, a str or an iterable of str", argname);
    }
    return -1;
  }
  Py_ssize_t n = PyTuple_GET_SIZE(tl->keep);
  tl->v = PyMem_Calloc((size_t)n + 1, sizeof(char *));
  if (!tl->v) {
    Py_CLEAR(tl->keep);
    PyErr_NoMemory();
    return -1;
  }
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *item = PyTuple_GET_ITEM(tl->keep, i);
    if (!PyUnicode_Check(item)) {
      PyErr_Format(PyExc_TypeError, "%s: each tag must be a str, not %.100s",
                   argname, Py_TYPE(item)->tp_name);
      taglist_clear(tl);
      return -1;
    }
    tl->v[i] = PyUnicode_AsUTF8(item);
    if (!tl->v[i]) {
      taglist_clear(tl);
      return -1;
    }
  }
  return 0;
}

/* ---- dict builders ----------------------------------------------------- */

#define SET_ITEM(d, key, value)                                   \
  do {                                                            \
    PyObject *v_ = (value);                                       \
    if (!v_ || PyDict_SetItemString((d), (key), v_) < 0) {        \
      Py_XDECREF(v_);                                             \
      Py_DECREF(d);                                               \
      return NULL;                                                \
    }                                                             \
    Py_DECREF(v_);                                                \
  } while (0)

static PyObject *stats_dict(const cumem_stats_t *s) {
  PyObject *d = PyDict_New();
  if (!d) return NULL;
  SET_ITEM(d, "allocations", PyLong_FromSize_t(s->allocations));
  SET_ITEM(d, "bytes_allocated", PyLong_FromSize_t(s->bytes_allocated));
  SET_ITEM(d, "bytes_mapped", PyLong_FromSize_t(s->bytes_mapped));
  SET_ITEM(d, "bytes_asleep", PyLong_FromSize_t(s->bytes_asleep));
  SET_ITEM(d, "bytes_backed_up", PyLong_FromSize_t(s->bytes_backed_up));
  SET_ITEM(d, "bytes_host_held", PyLong_FromSize_t(s->bytes_host_held));
  SET_ITEM(d, "bytes_skipped", PyLong_FromSize_t(s->bytes_skipped));
  SET_ITEM(d, "bytes_on_disk", PyLong_FromSize_t(s->bytes_on_disk));
  SET_ITEM(d, "bytes_host_pinned", PyLong_FromSize_t(s->bytes_host_pinned));
  return d;
}

static PyObject *info_dict(const cumem_alloc_info_t *i) {
  PyObject *d = PyDict_New();
  if (!d) return NULL;
  SET_ITEM(d, "ptr", PyLong_FromVoidPtr(i->ptr));
  SET_ITEM(d, "size", PyLong_FromSize_t(i->size));
  SET_ITEM(d, "requested", PyLong_FromSize_t(i->requested));
  SET_ITEM(d, "device", PyLong_FromLong(i->device));
  SET_ITEM(d, "asleep", PyBool_FromLong(i->asleep));
  SET_ITEM(d, "backed_up", PyBool_FromLong(i->backed_up));
  SET_ITEM(d, "tag", PyUnicode_FromString(i->tag));
  SET_ITEM(d, "on_disk", PyBool_FromLong(i->on_disk));
  return d;
}

static PyObject *device_dict(const cumem_device_info_t *i) {
  PyObject *d = PyDict_New();
  if (!d) return NULL;
  SET_ITEM(d, "name", PyUnicode_FromString(i->name));
  SET_ITEM(d, "total_bytes", PyLong_FromSize_t(i->total_bytes));
  SET_ITEM(d, "free_bytes", PyLong_FromSize_t(i->free_bytes));
  SET_ITEM(d, "granularity", PyLong_FromSize_t(i->granularity));
  SET_ITEM(d, "rdma", PyBool_FromLong(i->rdma));
  SET_ITEM(d, "fabric", PyBool_FromLong(i->fabric));
  SET_ITEM(d, "posix_fd", PyBool_FromLong(i->posix_fd));
  SET_ITEM(d, "numa_node", PyLong_FromLong(i->numa_node));
  return d;
}

static PyObject *counters_dict(const cumem_backend_counters_t *c) {
  PyObject *d = PyDict_New();
  if (!d) return NULL;
  SET_ITEM(d, "reservations", PyLong_FromLong(c->reservations));
  SET_ITEM(d, "handles", PyLong_FromLong(c->handles));
  SET_ITEM(d, "mappings", PyLong_FromLong(c->mappings));
  SET_ITEM(d, "host_registrations", PyLong_FromLong(c->host_registrations));
  SET_ITEM(d, "streams", PyLong_FromLong(c->streams));
  SET_ITEM(d, "events", PyLong_FromLong(c->events));
  return d;
}

/* ---- Instance ---------------------------------------------------------- */

typedef struct {
  PyObject_HEAD
  cumem_t *cm;
  int owned;                 /* 0 for the process-wide default instance */
  cumem_backend_t *fault;    /* the fault backend, when opened with fault=True */
  PyObject *backend_name;    /* keeps opts.backend's string alive */
  /* (the core copies opts.prepare_ahead: no need to keep that one) */
} InstanceObject;

static PyTypeObject InstanceType;
static PyObject *default_instance; /* the Instance wrapping cumem_default() */

static int instance_ok(InstanceObject *self) {
  if (self->cm) return 1;
  PyErr_SetString(PyExc_ValueError, "this cumem Instance is closed");
  return 0;
}

#define CHECK_OPEN(self) \
  do {                   \
    if (!instance_ok(self)) return NULL; \
  } while (0)

/* A path argument: None (or "") = no path (*out NULL), else str, bytes or
 * os.PathLike, converted with the filesystem encoding into *holder (a
 * bytes object the caller releases). */
static int path_arg(PyObject *obj, PyObject **holder, const char **out) {
  *holder = NULL;
  *out = NULL;
  if (obj == Py_None) return 0;
  if (!PyUnicode_FSConverter(obj, holder)) return -1;
  const char *p = PyBytes_AS_STRING(*holder);
  *out = *p ? p : NULL;
  return 0;
}

/* Instance(backend=None, *, chunk_size=None, zero_on_wake=None,
 *          retain_backup=None, copy_chunk=None, host_threads=None,
 *          verbose=None, fault=False, disk_dir=None, prepare_ahead=None,
 *          prepare_ahead_delay_ms=None, skip_unchanged=None)
 * Opens a private instance. Options left None keep cumem_options_init's
 * value (the defaults, then the CUMEM_* environment). fault=True wraps the
 * backend in the fault-injecting one (for tests; see fault_arm). disk_dir
 * (a path) is where tags with backup="disk" sleep; None keeps
 * CUMEM_DISK_DIR. */
static int Instance_init(InstanceObject *self, PyObject *args, PyObject *kw) {
  static char *kwlist[] = {"backend",       "chunk_size",   "zero_on_wake",
                           "retain_backup", "copy_chunk",   "host_threads",
                           "verbose",       "fault",        "disk_dir",
                           "prepare_ahead", "prepare_ahead_delay_ms",
                           "skip_unchanged", NULL};
  PyObject *backend = Py_None, *chunk = Py_None, *zero = Py_None,
           *retain = Py_None, *copy = Py_None, *threads = Py_None,
           *verbose = Py_None, *disk_dir = Py_None, *disk_dir_bytes = NULL,
           *ahead_delay = Py_None, *skip = Py_None;
  const char *ahead = NULL;
  int fault = 0;
  if (self->cm) {
    PyErr_SetString(PyExc_RuntimeError, "Instance is already open");
    return -1;
  }
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|O$OOOOOOpOO&OO", kwlist, &backend,
                                   &chunk, &zero, &retain, &copy, &threads,
                                   &verbose, &fault, &disk_dir, conv_opt_str,
                                   &ahead, &ahead_delay, &skip))
    return -1;

  cumem_options_t opts;
  cumem_options_init(&opts);
  if (backend != Py_None) {
    if (!PyUnicode_Check(backend)) {
      PyErr_SetString(PyExc_TypeError, "backend must be a str or None");
      return -1;
    }
    Py_INCREF(backend);
    Py_XSETREF(self->backend_name, backend);
    opts.backend = PyUnicode_AsUTF8(backend);
    if (!opts.backend) return -1;
  }
#define OPT_SIZE(obj, field)                                   \
  if ((obj) != Py_None) {                                      \
    size_t v_ = PyLong_AsSize_t(obj);                          \
    if (v_ == (size_t)-1 && PyErr_Occurred()) return -1;       \
    opts.field = v_;                                           \
  }
#define OPT_INT(obj, field)                                    \
  if ((obj) != Py_None) {                                      \
    long v_ = PyLong_AsLong(obj);                              \
    if (v_ == -1 && PyErr_Occurred()) return -1;               \
    opts.field = (int)v_;                                      \
  }
  OPT_SIZE(chunk, chunk_size)
  OPT_INT(zero, zero_on_wake)
  OPT_INT(retain, retain_backup)
  OPT_SIZE(copy, copy_chunk)
  OPT_INT(threads, host_threads)
  OPT_INT(verbose, verbose)
  OPT_INT(ahead_delay, prepare_ahead_delay_ms)
  if (ahead) opts.prepare_ahead = ahead; /* "" = no tag */
  OPT_INT(skip, skip_unchanged)
#undef OPT_SIZE
#undef OPT_INT
  if (disk_dir != Py_None) {
    if (path_arg(disk_dir, &disk_dir_bytes, &opts.disk_dir) < 0) return -1;
  }

  int rc;
  cumem_t *cm = NULL;
  if (fault) {
    /* The fault backend wraps the named one (auto: cuda, else host). */
    cumem_backend_t *inner = NULL, *outer = NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = cumem_backend_open(opts.backend, &inner);
    if (rc == CUMEM_OK) rc = cumem_backend_fault(&outer, inner);
    if (rc != CUMEM_OK && inner) inner->destroy(inner);
    if (rc == CUMEM_OK) rc = cumem_open_backend(&cm, &opts, outer);
    Py_END_ALLOW_THREADS
    Py_CLEAR(disk_dir_bytes); /* the instance keeps its own copy */
    if (rc != CUMEM_OK) {
      raise_cumem(rc, "cumem_open_backend");
      return -1;
    }
    self->fault = outer;
  } else {
    Py_BEGIN_ALLOW_THREADS
    rc = cumem_open(&cm, &opts);
    Py_END_ALLOW_THREADS
    Py_CLEAR(disk_dir_bytes);
    if (rc != CUMEM_OK) {
      raise_cumem(rc, "cumem_open");
      return -1;
    }
  }
  self->cm = cm;
  self->owned = 1;
  return 0;
}

static void Instance_dealloc(InstanceObject *self) {
  if (self->cm && self->owned) {
    Py_BEGIN_ALLOW_THREADS
    cumem_close(self->cm);
    Py_END_ALLOW_THREADS
  }
  self->cm = NULL;
  Py_CLEAR(self->backend_name);
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Instance_close(InstanceObject *self, PyObject *noargs) {
  (void)noargs;
  if (!self->owned) {
    PyErr_SetString(PyExc_ValueError,
                    "the default instance lives as long as the process");
    return NULL;
  }
  if (self->cm) {
    int rc;
    cumem_t *cm = self->cm;
    self->cm = NULL;
    self->fault = NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = cumem_close(cm);
    Py_END_ALLOW_THREADS
    if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_close");
  }
  Py_RETURN_NONE;
}

static PyObject *Instance_alloc(InstanceObject *self, PyObject *args,
                                PyObject *kw) {
  static char *kwlist[] = {"size", "device", "tag", "peer_mask", NULL};
  Py_ssize_t size;
  int device = 0;
  const char *tag = NULL;
  unsigned long long peers = 0;
  CHECK_OPEN(self);
  if (!PyArg_ParseTupleAndKeywords(args, kw, "n|iO&K", kwlist, &size, &device,
                                   conv_opt_str, &tag, &peers))
    return NULL;
  if (size < 0) {
    PyErr_SetString(PyExc_ValueError, "size must be >= 0");
    return NULL;
  }
  void *ptr = NULL;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = cumem_alloc_ex(self->cm, &ptr, (size_t)size, device, tag, peers);
  Py_END_ALLOW_THREADS
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_alloc");
  return PyLong_FromVoidPtr(ptr);
}

static PyObject *Instance_free(InstanceObject *self, PyObject *args,
                               PyObject *kw) {
  static char *kwlist[] = {"ptr", "stream", NULL};
  void *ptr;
  opt_stream_t s = {0, NULL};
  CHECK_OPEN(self);
  if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|O&", kwlist, conv_addr, &ptr,
                                   conv_opt_stream, &s))
    return NULL;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = s.given ? cumem_free_on_stream(self->cm, ptr, s.stream)
               : cumem_free(self->cm, ptr);
  Py_END_ALLOW_THREADS
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_free");
  Py_RETURN_NONE;
}

static PyObject *Instance_query(InstanceObject *self, PyObject *arg) {
  void *ptr;
  CHECK_OPEN(self);
  if (!conv_addr(arg, &ptr)) return NULL;
  cumem_alloc_info_t info;
  memset(&info, 0, sizeof info);
  int rc = cumem_query(self->cm, ptr, &info);
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_query");
  return info_dict(&info);
}

/* sleep(tags=None, offload_tags=None): tags None = every tag; offload_tags
 * None = none (the core's convention; the adapters choose their defaults). */
static PyObject *Instance_sleep(InstanceObject *self, PyObject *args,
                                PyObject *kw) {
  static char *kwlist[] = {"tags", "offload_tags", NULL};
  PyObject *tags_obj = Py_None, *off_obj = Py_None;
  taglist_t tags, off;
  CHECK_OPEN(self);
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|OO", kwlist, &tags_obj,
                                   &off_obj))
    return NULL;
  if (taglist_from(tags_obj, &tags, "tags") < 0) return NULL;
  if (taglist_from(off_obj, &off, "offload_tags") < 0) {
    taglist_clear(&tags);
    return NULL;
  }
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = cumem_sleep(self->cm, tags.v, off.v);
  Py_END_ALLOW_THREADS
  taglist_clear(&tags);
  taglist_clear(&off);
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_sleep");
  Py_RETURN_NONE;
}

/* set_disk_dir(path): where tags with backup="disk" sleep from now on; None
 * or "" = nowhere. Checked first (CumemError EINVAL saying why). */
static PyObject *Instance_set_disk_dir(InstanceObject *self, PyObject *arg) {
  PyObject *holder;
  const char *path;
  CHECK_OPEN(self);
  if (path_arg(arg, &holder, &path) < 0) return NULL;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = cumem_set_disk_dir(self->cm, path);
  Py_END_ALLOW_THREADS
  Py_XDECREF(holder);
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_set_disk_dir");
  Py_RETURN_NONE;
}

/* The disk_dir (an absolute path) or None. */
static PyObject *Instance_get_disk_dir(InstanceObject *self, void *closure) {
  (void)closure;
  CHECK_OPEN(self);
  char buf[4097];
  int rc = cumem_get_disk_dir(self->cm, buf, sizeof buf);
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_get_disk_dir");
  if (!buf[0]) Py_RETURN_NONE;
  return PyUnicode_DecodeFSDefault(buf);
}

/* One tag-list argument, GIL released: wake, prepare_backup, release_backup. */
static PyObject *tags_call(InstanceObject *self, PyObject *args, PyObject *kw,
                           int (*fn)(cumem_t *, const char *const *),
                           const char *what) {
  static char *kwlist[] = {"tags", NULL};
  PyObject *tags_obj = Py_None;
  taglist_t tags;
  CHECK_OPEN(self);
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|O", kwlist, &tags_obj))
    return NULL;
  if (taglist_from(tags_obj, &tags, "tags") < 0) return NULL;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = fn(self->cm, tags.v);
  Py_END_ALLOW_THREADS
  taglist_clear(&tags);
  if (rc != CUMEM_OK) return raise_cumem(rc, what);
  Py_RETURN_NONE;
}

static PyObject *Instance_wake(InstanceObject *self, PyObject *args,
                               PyObject *kw) {
  return tags_call(self, args, kw, cumem_wake, "cumem_wake");
}

static PyObject *Instance_prepare_backup(InstanceObject *self, PyObject *args,
                                         PyObject *kw) {
  return tags_call(self, args, kw, cumem_prepare_backup,
                   "cumem_prepare_backup");
}

static PyObject *Instance_release_backup(InstanceObject *self, PyObject *args,
                                         PyObject *kw) {
  return tags_call(self, args, kw, cumem_release_backup,
                   "cumem_release_backup");
}

static PyObject *Instance_prepare_backup_async(InstanceObject *self,
                                               PyObject *args, PyObject *kw) {
  return tags_call(self, args, kw, cumem_prepare_backup_async,
                   "cumem_prepare_backup_async");
}

static PyObject *Instance_release_backup_async(InstanceObject *self,
                                               PyObject *args, PyObject *kw) {
  return tags_call(self, args, kw, cumem_release_backup_async,
                   "cumem_release_backup_async");
}

static PyObject *Instance_drain(InstanceObject *self, PyObject *noargs) {
  (void)noargs;
  CHECK_OPEN(self);
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = cumem_drain(self->cm);
  Py_END_ALLOW_THREADS
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_drain");
  Py_RETURN_NONE;
}

/* One address argument, GIL released: unmap_release, create_map. */
static PyObject *ptr_call(InstanceObject *self, PyObject *arg,
                          int (*fn)(cumem_t *, void *), const char *what) {
  void *ptr;
  CHECK_OPEN(self);
  if (!conv_addr(arg, &ptr)) return NULL;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = fn(self->cm, ptr);
  Py_END_ALLOW_THREADS
  if (rc != CUMEM_OK) return raise_cumem(rc, what);
  Py_RETURN_NONE;
}

static PyObject *Instance_unmap_release(InstanceObject *self, PyObject *arg) {
  return ptr_call(self, arg, cumem_unmap_release, "cumem_unmap_release");
}

static PyObject *Instance_create_map(InstanceObject *self, PyObject *arg) {
  return ptr_call(self, arg, cumem_create_map, "cumem_create_map");
}

/* copy_to_device(dst, data): data is any bytes-like object. */
static PyObject *Instance_copy_to_device(InstanceObject *self, PyObject *args) {
  void *dst;
  Py_buffer buf;
  CHECK_OPEN(self);
  if (!PyArg_ParseTuple(args, "O&y*", conv_addr, &dst, &buf)) return NULL;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = cumem_copy_to_device(self->cm, dst, buf.buf, (size_t)buf.len);
  Py_END_ALLOW_THREADS
  PyBuffer_Release(&buf);
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_copy_to_device");
  Py_RETURN_NONE;
}

/* copy_to_host(src, n) -> bytes */
static PyObject *Instance_copy_to_host(InstanceObject *self, PyObject *args) {
  void *src;
  Py_ssize_t n;
  CHECK_OPEN(self);
  if (!PyArg_ParseTuple(args, "O&n", conv_addr, &src, &n)) return NULL;
  if (n < 0) {
    PyErr_SetString(PyExc_ValueError, "n must be >= 0");
    return NULL;
  }
  PyObject *out = PyBytes_FromStringAndSize(NULL, n);
  if (!out) return NULL;
  char *dst = PyBytes_AS_STRING(out); /* not shared yet: safe without GIL */
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = cumem_copy_to_host(self->cm, dst, src, (size_t)n);
  Py_END_ALLOW_THREADS
  if (rc != CUMEM_OK) {
    Py_DECREF(out);
    return raise_cumem(rc, "cumem_copy_to_host");
  }
  return out;
}

/* memset(dst, value, n) */
static PyObject *Instance_memset(InstanceObject *self, PyObject *args) {
  void *dst;
  int value;
  Py_ssize_t n;
  CHECK_OPEN(self);
  if (!PyArg_ParseTuple(args, "O&in", conv_addr, &dst, &value, &n))
    return NULL;
  if (n < 0) {
    PyErr_SetString(PyExc_ValueError, "n must be >= 0");
    return NULL;
  }
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = cumem_memset(self->cm, dst, value, (size_t)n);
  Py_END_ALLOW_THREADS
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_memset");
  Py_RETURN_NONE;
}

/* set_tag_options(tag, *, backup=None, skip_unchanged=None,
 *                 prepare_ahead=None): per-tag choices; a keyword left None
 * keeps the tag's current value (a new tag starts from
 * cumem_tag_options_init). backup is "host" or "disk"; the others are
 * True/False, or -1 to follow the instance's option again. */
static int tag_flag(PyObject *obj, int *field, const char *name) {
  if (obj == Py_None) return 0;
  if (PyLong_Check(obj) && !PyBool_Check(obj)) {
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v != CUMEM_TAG_INHERIT) {
      PyErr_Format(PyExc_ValueError, "%s must be True, False, -1 (inherit) or None", name);
      return -1;
    }
    *field = CUMEM_TAG_INHERIT;
    return 0;
  }
  int v = PyObject_IsTrue(obj);
  if (v < 0) return -1;
  *field = v;
  return 0;
}

static PyObject *Instance_set_tag_options(InstanceObject *self, PyObject *args,
                                          PyObject *kw) {
  static char *kwlist[] = {"tag", "backup", "skip_unchanged", "prepare_ahead",
                           NULL};
  const char *tag;
  PyObject *backup = Py_None, *skip = Py_None, *ahead = Py_None;
  CHECK_OPEN(self);
  if (!PyArg_ParseTupleAndKeywords(args, kw, "s|$OOO", kwlist, &tag, &backup,
                                   &skip, &ahead))
    return NULL;
  cumem_tag_options_t o;
  if (cumem_tag_get_options(self->cm, tag, &o) != CUMEM_OK)
    cumem_tag_options_init(&o); /* a new tag (bad names fail below) */
  if (backup != Py_None) {
    const char *b = PyUnicode_Check(backup) ? PyUnicode_AsUTF8(backup) : NULL;
    if (b && strcmp(b, "host") == 0) o.backup = CUMEM_BACKUP_HOST;
    else if (b && strcmp(b, "disk") == 0) o.backup = CUMEM_BACKUP_DISK;
    else {
      if (!PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "backup must be \"host\" or \"disk\"");
      return NULL;
    }
  }
  if (tag_flag(skip, &o.skip_unchanged, "skip_unchanged") < 0 ||
      tag_flag(ahead, &o.prepare_ahead, "prepare_ahead") < 0)
    return NULL;
  int rc = cumem_tag_set_options(self->cm, tag, &o);
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_tag_set_options");
  Py_RETURN_NONE;
}

/* tag_options(tag) -> {"backup": "host"|"disk", "skip_unchanged": -1|0|1,
 * "prepare_ahead": -1|0|1} */
static PyObject *Instance_tag_options(InstanceObject *self, PyObject *arg) {
  CHECK_OPEN(self);
  const char *tag = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
  if (!tag) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "tag must be a str");
    return NULL;
  }
  cumem_tag_options_t o;
  int rc = cumem_tag_get_options(self->cm, tag, &o);
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_tag_get_options");
  PyObject *d = PyDict_New();
  if (!d) return NULL;
  SET_ITEM(d, "backup", PyUnicode_FromString(o.backup == CUMEM_BACKUP_DISK ? "disk" : "host"));
  SET_ITEM(d, "skip_unchanged", PyLong_FromLong(o.skip_unchanged));
  SET_ITEM(d, "prepare_ahead", PyLong_FromLong(o.prepare_ahead));
  return d;
}

/* stats(tag=None) -> dict: one tag's figures, or all tags' together. */
static PyObject *Instance_stats(InstanceObject *self, PyObject *args,
                                PyObject *kw) {
  static char *kwlist[] = {"tag", NULL};
  const char *tag = NULL;
  CHECK_OPEN(self);
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|O&", kwlist, conv_opt_str,
                                   &tag))
    return NULL;
  cumem_stats_t s;
  memset(&s, 0, sizeof s);
  int rc = cumem_stats(self->cm, tag, &s);
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_stats");
  return stats_dict(&s);
}

/* tags() -> list of every tag used so far. */
static PyObject *Instance_tags(InstanceObject *self, PyObject *noargs) {
  (void)noargs;
  CHECK_OPEN(self);
  size_t cap = 16, count = 0;
  const char **names = NULL;
  for (;;) {
    const char **grown = PyMem_Realloc((void *)names, cap * sizeof(char *));
    if (!grown) {
      PyMem_Free((void *)names);
      return PyErr_NoMemory();
    }
    names = grown;
    int rc = cumem_tags(self->cm, names, cap, &count);
    if (rc != CUMEM_OK) {
      PyMem_Free((void *)names);
      return raise_cumem(rc, "cumem_tags");
    }
    if (count <= cap) break;
    cap = count; /* more tags than room: ask again with enough */
  }
  PyObject *list = PyList_New((Py_ssize_t)count);
  for (size_t i = 0; list && i < count; i++) {
    PyObject *s = PyUnicode_FromString(names[i]);
    if (!s) Py_CLEAR(list);
    else PyList_SET_ITEM(list, (Py_ssize_t)i, s);
  }
  PyMem_Free((void *)names);
  return list;
}

static PyObject *Instance_backend_counters(InstanceObject *self,
                                           PyObject *noargs) {
  (void)noargs;
  CHECK_OPEN(self);
  cumem_backend_counters_t c;
  memset(&c, 0, sizeof c);
  int rc = cumem_backend_counters(self->cm, &c);
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_backend_counters");
  return counters_dict(&c);
}

static PyObject *Instance_device_count(InstanceObject *self, PyObject *noargs) {
  (void)noargs;
  CHECK_OPEN(self);
  int n = 0, rc;
  Py_BEGIN_ALLOW_THREADS
  rc = cumem_device_count(self->cm, &n);
  Py_END_ALLOW_THREADS
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_device_count");
  return PyLong_FromLong(n);
}

static PyObject *Instance_device_info(InstanceObject *self, PyObject *args,
                                      PyObject *kw) {
  static char *kwlist[] = {"device", NULL};
  int device = 0, rc;
  CHECK_OPEN(self);
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|i", kwlist, &device))
    return NULL;
  cumem_device_info_t info;
  memset(&info, 0, sizeof info);
  Py_BEGIN_ALLOW_THREADS
  rc = cumem_device_info(self->cm, device, &info);
  Py_END_ALLOW_THREADS
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_device_info");
  return device_dict(&info);
}

/* backup_view(ptr) -> writable memoryview of the host backup from ptr to the
 * end of its allocation, or None when no backup holds its content. The view
 * does not own the memory: it is valid until the backup is dropped (a wake
 * without retention, release_backup, free). Copy it to keep it. */
static PyObject *Instance_backup_view(InstanceObject *self, PyObject *arg) {
  void *ptr;
  CHECK_OPEN(self);
  if (!conv_addr(arg, &ptr)) return NULL;
  void *host = NULL;
  size_t len = 0;
  int rc = cumem_backup_view(self->cm, ptr, &host, &len);
  if (rc == CUMEM_ENOTFOUND) Py_RETURN_NONE;
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_backup_view");
  if (!host) Py_RETURN_NONE;
  return PyMemoryView_FromMemory(host, (Py_ssize_t)len, PyBUF_WRITE);
}

/* fault_arm(n, op=None, code=None, persistent=False): fail the nth backend
 * call (of operation `op`, e.g. "create") with `code` (None: CUMEM_EDRIVER);
 * n = 0 turns faults off. Only for an Instance opened with fault=True. */
static PyObject *Instance_fault_arm(InstanceObject *self, PyObject *args,
                                    PyObject *kw) {
  static char *kwlist[] = {"n", "op", "code", "persistent", NULL};
  long n;
  const char *op = NULL;
  PyObject *code_obj = Py_None;
  int code = CUMEM_EDRIVER, persistent = 0;
  CHECK_OPEN(self);
  if (!self->fault) {
    PyErr_SetString(PyExc_ValueError, "open the Instance with fault=True");
    return NULL;
  }
  if (!PyArg_ParseTupleAndKeywords(args, kw, "l|O&Op", kwlist, &n,
                                   conv_opt_str, &op, &code_obj, &persistent))
    return NULL;
  if (code_obj != Py_None) {
    long v = PyLong_AsLong(code_obj);
    if (v == -1 && PyErr_Occurred()) return NULL;
    if (v < INT_MIN || v > INT_MAX) {
      PyErr_SetString(PyExc_OverflowError, "code is out of range");
      return NULL;
    }
    code = (int)v;
  }
  cumem_fault_arm(self->fault, n, op, code, persistent);
  Py_RETURN_NONE;
}

static PyObject *Instance_fault_injected(InstanceObject *self,
                                         PyObject *noargs) {
  (void)noargs;
  CHECK_OPEN(self);
  if (!self->fault) {
    PyErr_SetString(PyExc_ValueError, "open the Instance with fault=True");
    return NULL;
  }
  return PyLong_FromLong(cumem_fault_injected(self->fault));
}

static PyObject *Instance_get_backend(InstanceObject *self, void *closure) {
  (void)closure;
  CHECK_OPEN(self);
  return PyUnicode_FromString(cumem_backend_name(self->cm));
}

static PyObject *Instance_get_closed(InstanceObject *self, void *closure) {
  (void)closure;
  return PyBool_FromLong(self->cm == NULL);
}

static PyObject *Instance_enter(PyObject *self, PyObject *noargs) {
  (void)noargs;
  Py_INCREF(self);
  return self;
}

static PyObject *Instance_exit(InstanceObject *self, PyObject *args) {
  (void)args;
  if (!self->owned) Py_RETURN_NONE;
  return Instance_close(self, NULL);
}

/* Each doc string starts with its signature ("name($self, ...)\n--\n\n"),
 * which gives help() and inspect.signature() the real parameters;
 * python/cumem/_C.pyi repeats them for type checkers (a test compares). */
#define VARKW(fn) (PyCFunction)(void (*)(void))(fn), METH_VARARGS | METH_KEYWORDS
static PyMethodDef Instance_methods[] = {
    {"alloc", VARKW(Instance_alloc),
     "alloc($self, /, size, device=0, tag=None, peer_mask=0)\n--\n\n"
     "Allocate size bytes on device under tag (None: this thread's current "
     "tag), mapped and readable/writable by the devices in peer_mask too. "
     "Returns the address as an int."},
    {"free", VARKW(Instance_free),
     "free($self, /, ptr, stream=None)\n--\n\n"
     "Free the allocation at ptr, asleep or awake. Waits for the device, or "
     "only for stream (an int CUstream) when given."},
    {"query", (PyCFunction)Instance_query, METH_O,
     "query($self, ptr, /)\n--\n\n"
     "Describe the allocation containing ptr: a dict of ptr, size, "
     "requested, device, asleep, backed_up, tag, on_disk."},
    {"sleep", VARKW(Instance_sleep),
     "sleep($self, /, tags=None, offload_tags=None)\n--\n\n"
     "Release the physical memory of every allocation of tags (None: all), "
     "after copying those of offload_tags (None: none) to host memory (to "
     "disk for tags with backup=\"disk\"). A failed sleep keeps what is "
     "asleep asleep, with its backup; a retry completes it. A disk that "
     "cannot take the disk backups (ENOSPC, EIO) changes nothing."},
    {"wake", VARKW(Instance_wake),
     "wake($self, /, tags=None)\n--\n\n"
     "Map memory again for the sleeping allocations of tags (None: all) and "
     "restore their backups. On failure nothing is lost: a later wake "
     "restores everything."},
    {"prepare_backup", VARKW(Instance_prepare_backup),
     "prepare_backup($self, /, tags=None)\n--\n\n"
     "Pin host backup memory for these tags now, so that the first sleep "
     "only copies."},
    {"release_backup", VARKW(Instance_release_backup),
     "release_backup($self, /, tags=None)\n--\n\n"
     "Give back the retained host backups of awake allocations."},
    {"prepare_backup_async", VARKW(Instance_prepare_backup_async),
     "prepare_backup_async($self, /, tags=None)\n--\n\n"
     "Pin host backup memory for these tags in the background, starting "
     "now; returns at once."},
    {"release_backup_async", VARKW(Instance_release_backup_async),
     "release_backup_async($self, /, tags=None)\n--\n\n"
     "Give back the retained host backups of awake allocations in the "
     "background; returns at once."},
    {"drain", (PyCFunction)Instance_drain, METH_NOARGS,
     "drain($self, /)\n--\n\n"
     "Finish the background work (giving backups back, preparing them "
     "ahead) now, on this thread; raise its first failure not yet "
     "reported."},
    {"unmap_release", (PyCFunction)Instance_unmap_release, METH_O,
     "unmap_release($self, ptr, /)\n--\n\n"
     "Release one allocation's physical memory, without a backup (the seed "
     "ABI's python_unmap_and_release)."},
    {"create_map", (PyCFunction)Instance_create_map, METH_O,
     "create_map($self, ptr, /)\n--\n\n"
     "Back one released allocation with physical memory again."},
    {"copy_to_device", (PyCFunction)Instance_copy_to_device, METH_VARARGS,
     "copy_to_device($self, dst, data, /)\n--\n\n"
     "Copy a bytes-like object to the device address dst."},
    {"copy_to_host", (PyCFunction)Instance_copy_to_host, METH_VARARGS,
     "copy_to_host($self, src, n, /)\n--\n\n"
     "Copy n bytes from the device address src; returns bytes."},
    {"memset", (PyCFunction)Instance_memset, METH_VARARGS,
     "memset($self, dst, value, n, /)\n--\n\n"
     "Set n bytes at the device address dst to value."},
    {"set_tag_options", VARKW(Instance_set_tag_options),
     "set_tag_options($self, /, tag, *, backup=None, skip_unchanged=None, "
     "prepare_ahead=None)\n--\n\n"
     "Per-tag choices; a keyword left None keeps the tag's current value. "
     "backup is \"host\" or \"disk\"; the others True, False, or -1 to "
     "follow the instance's option."},
    {"tag_options", (PyCFunction)Instance_tag_options, METH_O,
     "tag_options($self, tag, /)\n--\n\n"
     "The tag's choices: a dict of backup, skip_unchanged, prepare_ahead."},
    {"set_disk_dir", (PyCFunction)Instance_set_disk_dir, METH_O,
     "set_disk_dir($self, path, /)\n--\n\n"
     "Where tags with backup=\"disk\" sleep from now on: a directory that "
     "exists and takes new files (str or path-like); None = nowhere. "
     "Backups already on disk stay where they are."},
    {"stats", VARKW(Instance_stats),
     "stats($self, /, tag=None)\n--\n\n"
     "Figures for one tag, or all tags together: allocations, "
     "bytes_allocated, bytes_mapped, bytes_asleep, bytes_backed_up (host or "
     "disk), bytes_host_held, bytes_host_pinned, bytes_on_disk."},
    {"tags", (PyCFunction)Instance_tags, METH_NOARGS,
     "tags($self, /)\n--\n\n"
     "Every tag used so far, as a list."},
    {"backend_counters", (PyCFunction)Instance_backend_counters, METH_NOARGS,
     "backend_counters($self, /)\n--\n\n"
     "Live backend objects (reservations, handles, mappings, "
     "host_registrations, streams, events), for leak checks."},
    {"device_count", (PyCFunction)Instance_device_count, METH_NOARGS,
     "device_count($self, /)\n--\n\n"
     "The number of devices the backend sees."},
    {"device_info", VARKW(Instance_device_info),
     "device_info($self, /, device=0)\n--\n\n"
     "One device: name, total_bytes, free_bytes, granularity, rdma, fabric, "
     "posix_fd, numa_node."},
    {"backup_view", (PyCFunction)Instance_backup_view, METH_O,
     "backup_view($self, ptr, /)\n--\n\n"
     "A writable memoryview of the host backup from ptr to the end of its "
     "allocation, or None when no backup holds its content. Valid until the "
     "backup is given back: copy it to keep it."},
    {"fault_arm", VARKW(Instance_fault_arm),
     "fault_arm($self, /, n, op=None, code=None, persistent=False)\n--\n\n"
     "Fail the nth backend call (of operation op, e.g. \"create\") with "
     "code (None: EDRIVER), every later one too if persistent; n = 0 turns "
     "faults off. Instances opened with fault=True only."},
    {"fault_injected", (PyCFunction)Instance_fault_injected, METH_NOARGS,
     "fault_injected($self, /)\n--\n\n"
     "How many failures were injected since the last fault_arm."},
    {"close", (PyCFunction)Instance_close, METH_NOARGS,
     "close($self, /)\n--\n\n"
     "Free every allocation and backup, then the instance. The default "
     "instance cannot be closed."},
    {"__enter__", Instance_enter, METH_NOARGS,
     "__enter__($self, /)\n--\n\n"
     "Return the instance itself."},
    {"__exit__", (PyCFunction)Instance_exit, METH_VARARGS,
     "__exit__($self, exc_type, exc, tb, /)\n--\n\n"
     "Close the instance (not the default one)."},
    {NULL, NULL, 0, NULL}};
#undef VARKW

static PyGetSetDef Instance_getset[] = {
    {"backend", (getter)Instance_get_backend, NULL,
     "the backend's name: \"cuda\" or \"host\"", NULL},
    {"closed", (getter)Instance_get_closed, NULL, "True after close()", NULL},
    {"disk_dir", (getter)Instance_get_disk_dir, NULL,
     "where tags with backup=\"disk\" sleep (absolute path), or None", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject InstanceType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cumem._C.Instance",
    .tp_basicsize = sizeof(InstanceObject),
    .tp_dealloc = (destructor)Instance_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Instance(backend=None, *, chunk_size=None, zero_on_wake=None, "
              "retain_backup=None, copy_chunk=None, host_threads=None, "
              "verbose=None, fault=False, disk_dir=None, prepare_ahead=None, "
              "prepare_ahead_delay_ms=None, skip_unchanged=None)\n--\n\n"
              "One cumem instance (cumem_open), with its own allocations, "
              "tags and backups. Options left None keep their default (then "
              "the CUMEM_* environment); fault=True wraps the backend in the "
              "fault-injecting one, for tests (see fault_arm); disk_dir (a "
              "path) is where tags with backup=\"disk\" sleep; skip_unchanged=True "
              "makes sleeps copy only the copy chunks that changed since the "
              "retained backup was written. Use "
              "cumem.default() for the process-wide instance that PyTorch "
              "allocations go to.",
    .tp_methods = Instance_methods,
    .tp_getset = Instance_getset,
    .tp_init = (initproc)Instance_init,
    .tp_new = PyType_GenericNew,
};

/* ---- module functions -------------------------------------------------- */

/* default() -> the Instance wrapping cumem_default(), opened on first use
 * with the CUMEM_* environment. It is the instance cumem_torch_malloc uses. */
static PyObject *mod_default(PyObject *mod, PyObject *noargs) {
  (void)mod;
  (void)noargs;
  if (!default_instance) {
    cumem_t *cm = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = cumem_default(&cm);
    Py_END_ALLOW_THREADS
    if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_default");
    if (!default_instance) { /* another thread may have won meanwhile */
      InstanceObject *inst = PyObject_New(InstanceObject, &InstanceType);
      if (!inst) return NULL;
      inst->cm = cm;
      inst->owned = 0;
      inst->fault = NULL;
      inst->backend_name = NULL;
      default_instance = (PyObject *)inst;
    }
  }
  Py_INCREF(default_instance);
  return default_instance;
}

static PyObject *mod_set_current_tag(PyObject *mod, PyObject *args) {
  (void)mod;
  const char *tag = NULL;
  if (!PyArg_ParseTuple(args, "|O&", conv_opt_str, &tag)) return NULL;
  int rc = cumem_set_current_tag(tag);
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_set_current_tag");
  Py_RETURN_NONE;
}

static PyObject *mod_current_tag(PyObject *mod, PyObject *noargs) {
  (void)mod;
  (void)noargs;
  const char *t = cumem_current_tag();
  return PyUnicode_FromString(t ? t : "default");
}

static PyObject *mod_last_error(PyObject *mod, PyObject *noargs) {
  (void)mod;
  (void)noargs;
  return PyUnicode_FromString(cumem_last_error());
}

/* An error code from a Python int. A value outside int is no code at all:
 * it becomes 1, which no code is, rather than being truncated into one. */
static int code_arg(PyObject *arg, int *code) {
  int overflow = 0;
  long long v = PyLong_AsLongLongAndOverflow(arg, &overflow);
  if (v == -1 && PyErr_Occurred()) return 0;
  *code = overflow || v < INT_MIN || v > INT_MAX ? 1 : (int)v;
  return 1;
}

static PyObject *mod_strerror(PyObject *mod, PyObject *arg) {
  (void)mod;
  int code;
  if (!code_arg(arg, &code)) return NULL;
  return PyUnicode_FromString(cumem_strerror(code));
}

static PyObject *mod_err_name(PyObject *mod, PyObject *arg) {
  (void)mod;
  int code;
  if (!code_arg(arg, &code)) return NULL;
  return PyUnicode_FromString(cumem_err_name(code));
}

static PyMethodDef module_methods[] = {
    {"default", mod_default, METH_NOARGS,
     "default($module, /)\n--\n\n"
     "The process-wide Instance, opened on first use with the CUMEM_* "
     "environment: the one PyTorch allocations and cumem.cumem_allocator "
     "use."},
    {"set_current_tag", mod_set_current_tag, METH_VARARGS,
     "set_current_tag($module, tag=None, /)\n--\n\n"
     "Set this thread's tag for new allocations that name none; None "
     "restores \"default\"."},
    {"current_tag", mod_current_tag, METH_NOARGS,
     "current_tag($module, /)\n--\n\n"
     "This thread's current tag."},
    {"last_error", mod_last_error, METH_NOARGS,
     "last_error($module, /)\n--\n\n"
     "The detail of this thread's last failed cumem call (driver call, "
     "result name, source line), or \"\"."},
    {"strerror", mod_strerror, METH_O,
     "strerror($module, code, /)\n--\n\n"
     "Name and meaning of an error code: \"CUMEM_ENOMEM: out of device "
     "memory\"."},
    {"err_name", mod_err_name, METH_O,
     "err_name($module, code, /)\n--\n\n"
     "The name of an error code alone: \"CUMEM_ENOMEM\"."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "cumem._C",
    "CPython binding of the cumem core. Use the cumem package, not this.", -1,
    module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject *m = PyModule_Create(&module_def);
  if (!m) return NULL;
  if (PyType_Ready(&InstanceType) < 0) goto fail;
  Py_INCREF(&InstanceType);
  if (PyModule_AddObject(m, "Instance", (PyObject *)&InstanceType) < 0) {
    Py_DECREF(&InstanceType);
    goto fail;
  }

  CumemError = PyErr_NewExceptionWithDoc(
      "cumem.CumemError",
      "A cumem call failed. A RuntimeError (what vLLM and torch_memory_saver "
      "users catch); .code is the negative CUMEM_E* code.",
      PyExc_RuntimeError, NULL);
  if (!CumemError) goto fail;
  Py_INCREF(CumemError);
  if (PyModule_AddObject(m, "CumemError", CumemError) < 0) goto fail;
  CumemOOMError = PyErr_NewExceptionWithDoc(
      "cumem.CumemOutOfMemoryError",
      "Out of device memory (CUMEM_ENOMEM); a CumemError, so a RuntimeError.",
      CumemError, NULL);
  if (!CumemOOMError) goto fail;
  Py_INCREF(CumemOOMError);
  if (PyModule_AddObject(m, "CumemOutOfMemoryError", CumemOOMError) < 0)
    goto fail;

  /* LIBRARY: the file the core was loaded from (libcumem.so.0), as the
   * dynamic loader resolved it; PyTorch loads the entry points from it. */
  Dl_info core;
  if (!dladdr((void *)cumem_version, &core) || !core.dli_fname) {
    PyErr_SetString(PyExc_ImportError,
                    "cumem._C: cannot tell which file holds the cumem core");
    goto fail;
  }
  if (PyModule_AddStringConstant(m, "LIBRARY", core.dli_fname) < 0 ||
      PyModule_AddStringConstant(m, "VERSION", cumem_version()) < 0 ||
      PyModule_AddIntConstant(m, "TAG_MAX", CUMEM_TAG_MAX) < 0 ||
      PyModule_AddIntConstant(m, "OK", CUMEM_OK) < 0)
    goto fail;
  /* One constant per code, from the core's list (cumem.ENOMEM, ...). */
#define XX(name, value, meaning) \
  if (PyModule_AddIntConstant(m, #name, CUMEM_##name) < 0) goto fail;
  CUMEM_ERRNO_MAP(XX)
#undef XX
  return m;
fail:
  Py_DECREF(m);
  return NULL;
}
