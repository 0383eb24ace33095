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
static PyObject *raise_message(int code, PyObject *msg);

static PyObject *raise_cumem(int code, const char *what) {
  const char *detail = cumem_last_error();
  /* %s decodes with errors="replace": a detail is never undecodable. */
  PyObject *msg = detail[0]
      ? PyUnicode_FromFormat("%s: %s (%s)", what, cumem_strerror(code), detail)
      : PyUnicode_FromFormat("%s: %s", what, cumem_strerror(code));
  return msg ? raise_message(code, msg) : NULL;
}

/* Raise CumemError (or its out-of-memory subclass) with .code = code and
 * this message (a new reference, consumed). Returns NULL. */
static PyObject *raise_message(int code, PyObject *msg) {
  PyObject *type = code == CUMEM_ENOMEM ? CumemOOMError : CumemError;
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

/* A string the library gives back (a tag, a name): decoded with
 * errors="replace", since a C caller or the environment may have written
 * bytes that are not UTF-8, and one such tag must not make tags() raise. */
static PyObject *text_of(const char *s) { return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace"); }

/* ---- argument helpers -------------------------------------------------- */

/* "O&" converter: a bit mask of devices, an int from 0 to 2**64 - 1 (the K
 * format would wrap 2**64 + 2 to 2, granting a peer nobody asked for). */
static int conv_mask(PyObject *obj, void *out) {
  if (!PyLong_Check(obj) || PyBool_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "peer_mask must be an int, not %.100s", Py_TYPE(obj)->tp_name);
    return 0;
  }
  unsigned long long v = PyLong_AsUnsignedLongLong(obj);
  if (v == (unsigned long long)-1 && PyErr_Occurred()) {
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "peer_mask = %R is not a device mask (an int from 0 to 2**64 - 1)", obj);
    return 0;
  }
  *(unsigned long long *)out = v;
  return 1;
}

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

/* The UTF-8 of a str for the core, valid while the str lives; NULL (with
 * ValueError) when it contains a NUL character: the core would read only
 * what comes before it ('a\0b' would become the tag 'a'). */
static const char *c_string(PyObject *str) {
  Py_ssize_t n;
  const char *s = PyUnicode_AsUTF8AndSize(str, &n);
  if (s && strlen(s) != (size_t)n) {
    PyErr_Format(PyExc_ValueError, "%R contains a NUL character, which cumem does not take", str);
    return NULL;
  }
  return s;
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
  const char *s = c_string(obj);
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
    tl->v[i] = c_string(item);
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
  SET_ITEM(d, "tag", text_of(i->tag));
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
  int calls;                 /* calls running on cm with the GIL released */
  int closing;               /* close() runs (with the GIL released) */
} InstanceObject;

static PyTypeObject InstanceType;
static PyObject *default_instance; /* the Instance wrapping cumem_default() */

static int instance_ok(InstanceObject *self) {
  if (self->cm && !self->closing) return 1;
  PyErr_SetString(PyExc_ValueError, self->cm ? "this cumem Instance is being closed"
                                             : "this cumem Instance is closed");
  return 0;
}

#define CHECK_OPEN(self) \
  do {                   \
    if (!instance_ok(self)) return NULL; \
  } while (0)

/* Calls that release the GIL read the instance once, under the GIL, and
 * count themselves in `calls` until they have it again: close() refuses
 * while any runs, so the instance is never freed under a call (a close
 * racing another thread's sleep once crashed the process). `ok` is 0 (with
 * ValueError set) when the instance is closed or being closed; the
 * statement then does not run. Check `ok` after cleaning up. */
#define RELEASED(self, cm, ok, ...)        \
  do {                                     \
    (ok) = instance_ok(self);              \
    if (ok) {                              \
      cumem_t *cm = (self)->cm;            \
      (self)->calls++;                     \
      Py_BEGIN_ALLOW_THREADS               \
      __VA_ARGS__;                         \
      Py_END_ALLOW_THREADS                 \
      (self)->calls--;                     \
    }                                      \
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

/* One keyword option to cumem_options_set: None keeps the value; True,
 * False and ints are written out in decimal (sizes in bytes); a str, bytes
 * or os.PathLike is taken as written ("64M", a directory), in the
 * filesystem encoding, NUL refused. Every check, range and message is the
 * core's. The text stays alive in `keep` until the instance is open
 * (string options point into it until cumem_open copies them). */
static int set_option(cumem_options_t *opts, const char *name, PyObject *value, PyObject *keep) {
  if (value == Py_None) return 0;
  PyObject *text = NULL;
  if (PyBool_Check(value)) text = PyBytes_FromString(value == Py_True ? "1" : "0");
  else if (PyLong_Check(value)) {
    PyObject *str = PyObject_Str(value);
    text = str ? PyUnicode_AsUTF8String(str) : NULL;
    Py_XDECREF(str);
  } else if (PyUnicode_Check(value) || PyBytes_Check(value) || PyObject_HasAttrString(value, "__fspath__")) {
    if (!PyUnicode_FSConverter(value, &text)) return -1; /* refuses NUL */
  } else {
    PyErr_Format(PyExc_TypeError, "option %s must be an int, a str, a path or None, not %.100s", name,
                 Py_TYPE(value)->tp_name);
    return -1;
  }
  if (!text) return -1;
  int appended = PyList_Append(keep, text);
  Py_DECREF(text);
  if (appended < 0) return -1;
  const char *ctext = PyBytes_AS_STRING(text);
  int rc = cumem_options_set(opts, name, ctext);
  if (rc != CUMEM_OK) {
    raise_cumem(rc, "cumem.Instance");
    return -1;
  }
  return 0;
}

/* Instance(backend=None, *, fault=False, **options)
 * Opens a private instance. options are the fields of cumem_options_t by
 * name (chunk_size, zero_on_wake, retain_backup, copy_chunk, host_threads,
 * release_threads, verbose, disk_dir, prepare_ahead, ...: every row of
 * src/options.c); one left out or None keeps cumem_options_init's value
 * (the defaults, then the CUMEM_* environment). A value not allowed raises
 * CumemError (EINVAL) naming the option and what it allows. fault=True
 * wraps the backend in the fault-injecting one (for tests; see
 * fault_arm). */
static int Instance_init(InstanceObject *self, PyObject *args, PyObject *kw) {
  if (self->cm) {
    PyErr_SetString(PyExc_RuntimeError, "Instance is already open");
    return -1;
  }
  Py_ssize_t nargs = PyTuple_GET_SIZE(args);
  if (nargs > 1) {
    PyErr_Format(PyExc_TypeError, "Instance() takes at most 1 positional argument (backend), %zd given", nargs);
    return -1;
  }
  cumem_options_t opts;
  cumem_options_init(&opts);
  int fault = 0;
  PyObject *keep = PyList_New(0);
  if (!keep) return -1;
  int bad = nargs == 1 && set_option(&opts, "backend", PyTuple_GET_ITEM(args, 0), keep) < 0;
  PyObject *key, *value;
  Py_ssize_t pos = 0;
  while (!bad && kw && PyDict_Next(kw, &pos, &key, &value)) {
    const char *name = c_string(key);
    if (!name) bad = 1;
    else if (strcmp(name, "fault") == 0) {
      bad = !PyBool_Check(value); /* "x" is true to PyObject_IsTrue */
      if (bad) PyErr_Format(PyExc_TypeError, "fault must be True or False, not %R", value);
      else fault = value == Py_True;
    } else if (nargs == 1 && strcmp(name, "backend") == 0) {
      PyErr_SetString(PyExc_TypeError, "Instance() got backend twice");
      bad = 1;
    } else bad = set_option(&opts, name, value, keep) < 0;
  }
  if (bad) {
    Py_DECREF(keep);
    return -1;
  }

  int rc;
  cumem_t *cm = NULL;
  cumem_backend_t *outer = NULL;
  if (fault) {
    /* The fault backend wraps the named one (auto: cuda, else host). */
    cumem_backend_t *inner = NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = cumem_backend_open(opts.backend, &inner);
    if (rc == CUMEM_OK) rc = cumem_backend_fault(&outer, inner);
    if (rc != CUMEM_OK && inner) inner->destroy(inner);
    if (rc == CUMEM_OK) rc = cumem_open_backend(&cm, &opts, outer);
    Py_END_ALLOW_THREADS
  } else {
    Py_BEGIN_ALLOW_THREADS
    rc = cumem_open(&cm, &opts);
    Py_END_ALLOW_THREADS
  }
  Py_DECREF(keep); /* the instance has its own copies of string options */
  if (rc != CUMEM_OK) {
    raise_cumem(rc, fault ? "cumem_open_backend" : "cumem_open");
    return -1;
  }
  self->cm = cm;
  self->fault = outer;
  self->owned = 1;
  self->calls = 0;
  self->closing = 0;
  return 0;
}

static void Instance_dealloc(InstanceObject *self) {
  /* No call can be running: each holds a reference to self. */
  if (self->cm && self->owned) {
    Py_BEGIN_ALLOW_THREADS
    cumem_close(self->cm);
    Py_END_ALLOW_THREADS
  }
  self->cm = NULL;
  Py_TYPE(self)->tp_free((PyObject *)self);
}

/* close(): refused with CumemError(EBUSY) while other threads' calls run on
 * the instance; a failed close keeps it open (and usable), so that close
 * can be retried and nothing it holds is lost. */
static PyObject *Instance_close(InstanceObject *self, PyObject *noargs) {
  (void)noargs;
  if (!self->owned) {
    PyErr_SetString(PyExc_ValueError,
                    "the default instance lives as long as the process");
    return NULL;
  }
  if (!self->cm) Py_RETURN_NONE;
  if (self->calls || self->closing) {
    PyObject *msg = self->closing
        ? PyUnicode_FromString("close: another thread is closing this Instance")
        : PyUnicode_FromFormat("close: %d call(s) on this Instance are still running in other "
                               "threads; close it once they have returned", self->calls);
    return msg ? raise_message(CUMEM_EBUSY, msg) : NULL;
  }
  cumem_t *cm = self->cm;
  int rc;
  self->closing = 1; /* new calls are refused meanwhile */
  Py_BEGIN_ALLOW_THREADS
  rc = cumem_close(cm);
  Py_END_ALLOW_THREADS
  self->closing = 0;
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_close");
  self->cm = NULL;
  self->fault = NULL;
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
  if (!PyArg_ParseTupleAndKeywords(args, kw, "n|iO&O&", kwlist, &size, &device,
                                   conv_opt_str, &tag, conv_mask, &peers))
    return NULL;
  if (size < 0) {
    PyErr_SetString(PyExc_ValueError, "size must be >= 0");
    return NULL;
  }
  void *ptr = NULL;
  int rc, ok;
  RELEASED(self, cm, ok, rc = cumem_alloc_ex(cm, &ptr, (size_t)size, device, tag, peers));
  if (!ok) return NULL;
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
  int rc, ok;
  RELEASED(self, cm, ok, rc = s.given ? cumem_free_on_stream(cm, ptr, s.stream) : cumem_free(cm, ptr));
  if (!ok) return NULL;
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
  int rc, ok;
  RELEASED(self, cm, ok, rc = cumem_sleep(cm, tags.v, off.v));
  taglist_clear(&tags);
  taglist_clear(&off);
  if (!ok) return NULL;
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
  int rc, ok;
  RELEASED(self, cm, ok, rc = cumem_set_disk_dir(cm, path));
  Py_XDECREF(holder);
  if (!ok) return NULL;
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
  int rc, ok;
  RELEASED(self, cm, ok, rc = fn(cm, tags.v));
  taglist_clear(&tags);
  if (!ok) return NULL;
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
  int rc, ok;
  RELEASED(self, cm, ok, rc = cumem_drain(cm));
  if (!ok) return NULL;
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_drain");
  Py_RETURN_NONE;
}

/* One address argument, GIL released: unmap_release, create_map. */
static PyObject *ptr_call(InstanceObject *self, PyObject *arg,
                          int (*fn)(cumem_t *, void *), const char *what) {
  void *ptr;
  CHECK_OPEN(self);
  if (!conv_addr(arg, &ptr)) return NULL;
  int rc, ok;
  RELEASED(self, cm, ok, rc = fn(cm, ptr));
  if (!ok) return NULL;
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
  int rc, ok;
  RELEASED(self, cm, ok, rc = cumem_copy_to_device(cm, dst, buf.buf, (size_t)buf.len));
  PyBuffer_Release(&buf);
  if (!ok) return NULL;
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
  int rc = CUMEM_OK, ok;
  RELEASED(self, cm, ok, rc = cumem_copy_to_host(cm, dst, src, (size_t)n));
  if (!ok) {
    Py_DECREF(out);
    return NULL;
  }
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
  if (value < 0 || value > 255) {
    PyErr_Format(PyExc_ValueError, "value = %d is not a byte (0 to 255)", value);
    return NULL;
  }
  int rc, ok;
  RELEASED(self, cm, ok, rc = cumem_memset(cm, dst, (unsigned char)value, (size_t)n));
  if (!ok) return NULL;
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
  if (!PyBool_Check(obj)) { /* "no" is true to PyObject_IsTrue: only a bool says yes or no */
    PyErr_Format(PyExc_TypeError, "%s must be True, False, -1 (inherit) or None, not %.100s", name,
                 Py_TYPE(obj)->tp_name);
    return -1;
  }
  *field = obj == Py_True;
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
    const char *b = PyUnicode_Check(backup) ? c_string(backup) : NULL;
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
  CHECK_OPEN(self); /* converting the flags may have run Python code */
  int rc = cumem_tag_set_options(self->cm, tag, &o);
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_tag_set_options");
  Py_RETURN_NONE;
}

/* tag_options(tag) -> {"backup": "host"|"disk", "skip_unchanged": -1|0|1,
 * "prepare_ahead": -1|0|1} */
static PyObject *Instance_tag_options(InstanceObject *self, PyObject *arg) {
  CHECK_OPEN(self);
  const char *tag = PyUnicode_Check(arg) ? c_string(arg) : NULL;
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
    PyObject *s = text_of(names[i]);
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
  int n = 0, rc, ok;
  RELEASED(self, cm, ok, rc = cumem_device_count(cm, &n));
  if (!ok) return NULL;
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_device_count");
  return PyLong_FromLong(n);
}

static PyObject *Instance_device_info(InstanceObject *self, PyObject *args,
                                      PyObject *kw) {
  static char *kwlist[] = {"device", NULL};
  int device = 0, rc, ok;
  CHECK_OPEN(self);
  if (!PyArg_ParseTupleAndKeywords(args, kw, "|i", kwlist, &device))
    return NULL;
  cumem_device_info_t info;
  memset(&info, 0, sizeof info);
  RELEASED(self, cm, ok, rc = cumem_device_info(cm, device, &info));
  if (!ok) return NULL;
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_device_info");
  return device_dict(&info);
}

/* The exporter behind backup_view's memoryview: it holds a pin
 * (cumem_backup_pin), so the memory stays mapped as long as any view of it
 * exists, even after the allocation is freed (from Python or from
 * PyTorch's C++), its backup released or the instance closed. A view
 * released with memoryview.release() raises ValueError afterwards, as
 * every released memoryview does. */
typedef struct {
  PyObject_HEAD
  void *buf;
  Py_ssize_t len;
  cumem_backup_pin_t *pin;
} PinnedObject;

static int Pinned_getbuffer(PinnedObject *self, Py_buffer *view, int flags) {
  return PyBuffer_FillInfo(view, (PyObject *)self, self->buf, self->len, 0, flags);
}

static void Pinned_dealloc(PinnedObject *self) {
  cumem_backup_unpin(self->pin); /* the last one unmaps a detached backup */
  Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyBufferProcs Pinned_as_buffer = {(getbufferproc)Pinned_getbuffer, NULL};

static PyTypeObject PinnedType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cumem._C.PinnedBackup",
    .tp_basicsize = sizeof(PinnedObject),
    .tp_dealloc = (destructor)Pinned_dealloc,
    .tp_as_buffer = &Pinned_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Host backup memory kept mapped for the memoryviews of it "
              "(Instance.backup_view).",
};

/* backup_view(ptr) -> writable memoryview of the host backup from ptr to the
 * end of its allocation, or None when no backup holds valid content (no
 * sleep saved it, or the last sleep discarded it). The memory stays valid
 * as long as the view (or anything made from it) lives: a free, a release
 * of the backup or close only detach it, and it is unmapped with its last
 * view. While the backup stays attached, later sleeps write into it. */
static PyObject *Instance_backup_view(InstanceObject *self, PyObject *arg) {
  void *ptr;
  CHECK_OPEN(self);
  if (!conv_addr(arg, &ptr)) return NULL;
  void *host = NULL;
  size_t len = 0;
  cumem_backup_pin_t *pin = NULL;
  int rc = cumem_backup_pin(self->cm, ptr, &host, &len, &pin);
  if (rc == CUMEM_ENOTFOUND) Py_RETURN_NONE;
  if (rc != CUMEM_OK) return raise_cumem(rc, "cumem_backup_pin");
  PinnedObject *p = PyObject_New(PinnedObject, &PinnedType);
  if (!p) {
    cumem_backup_unpin(pin);
    return NULL;
  }
  p->buf = host;
  p->len = (Py_ssize_t)len;
  p->pin = pin;
  PyObject *view = PyMemoryView_FromObject((PyObject *)p);
  Py_DECREF(p); /* the view holds it now (or, on failure, it unpins) */
  return view;
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
     "Give back every host backup that holds no content still to restore: "
     "retained ones of awake allocations, and those of allocations whose "
     "content a sleep discarded."},
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
     "allocation, or None when no backup holds valid content (none saved, "
     "discarded by the last sleep, or on disk). The memory stays mapped as "
     "long as the view lives, even after a free, release_backup or close; "
     "while the backup stays attached, later sleeps write into it."},
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
     "Free every allocation and backup, then the instance. Refused "
     "(CumemError EBUSY) while other threads' calls run on it; a failed "
     "close keeps the instance, and can be retried. The default instance "
     "cannot be closed."},
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
              "release_threads=None, verbose=None, fault=False, disk_dir=None, "
              "prepare_ahead=None, prepare_ahead_delay_ms=None, numa=None, "
              "register_lock=None, skip_unchanged=None)\n--\n\n"
              "One cumem instance (cumem_open), with its own allocations, "
              "tags and backups. Options are cumem_options_t's fields by name "
              "(an int, or a str such as \"64M\"); left None they keep their "
              "default (then the CUMEM_* environment). A value not allowed "
              "raises CumemError (EINVAL) naming the option and what it "
              "allows. fault=True wraps the backend in the fault-injecting "
              "one, for tests (see fault_arm); disk_dir (a path) is where "
              "tags with backup=\"disk\" sleep; skip_unchanged=True makes "
              "sleeps copy only the copy chunks that changed since the "
              "retained backup was written. close() refuses (EBUSY) while "
              "other threads' calls run on the instance. Use cumem.default() "
              "for the process-wide instance that PyTorch allocations go to.",
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
      inst->calls = 0;
      inst->closing = 0;
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
  return text_of(t ? t : "default");
}

static PyObject *mod_last_error(PyObject *mod, PyObject *noargs) {
  (void)mod;
  (void)noargs;
  const char *d = cumem_last_error();
  /* Never raise here: whatever bytes a detail holds, decode what can be. */
  return PyUnicode_DecodeUTF8(d, (Py_ssize_t)strlen(d), "replace");
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
  if (PyType_Ready(&InstanceType) < 0 || PyType_Ready(&PinnedType) < 0) goto fail;
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
