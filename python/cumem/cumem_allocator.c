/*
 * cumem.cumem_allocator — the seed's interface, on the cumem core.
 *
 * A drop-in for vLLM's extension `vllm.cumem_allocator` (csrc/
 * cumem_allocator.cpp), so that vLLM's unmodified vllm/device_allocator/
 * cumem.py runs on cumem:
 *
 *   init_module(python_malloc, python_free)
 *   python_create_and_map(device, size, d_mem, handle)
 *   python_unmap_and_release(device, size, d_mem, handle)
 *
 * and, from the same shared object, the CUDAPluggableAllocator pair
 *
 *   void *my_malloc(ssize_t size, int device, CUstream stream);
 *   void  my_free(void *ptr, ssize_t size, int device, CUstream stream);
 *
 * my_malloc calls python_malloc((device, aligned_size, d_mem, handle)) — one
 * argument, the 4-tuple; my_free calls python_free(d_mem) and expects that
 * tuple back. The handle is opaque to Python; here it is d_mem itself, since
 * the core tracks the physical memory of every allocation.
 *
 * Differences from vLLM's, each a fix of a reported failure:
 *  - strong references to the callbacks (borrowed ones crashed users when
 *    the bound methods were collected);
 *  - no sticky global error: every call reports its own failure only;
 *  - the memory is mapped before the malloc callback runs, and released if
 *    the callback raises, so Python never records a failed allocation;
 *  - my_free releases the GIL before unmapping and always frees the block
 *    PyTorch hands back, even when the free callback fails;
 *  - a free waits only for the block's stream, not the whole device.
 *
 * The core is not compiled in: this module links libcumem.so.0 (beside it,
 * found through an $ORIGIN rpath), the one copy of the core in the process,
 * and allocates in its process-wide default instance, the same one as
 * cumem._C, PyTorch's entry points and the interposer, so cumem.stats()
 * counts these allocations too. They are tagged "seed:<the thread's current
 * tag>" ("seed:default" unless cumem.using_tag says otherwise), which keeps
 * them apart from the other APIs' tags: CuMemAllocator.sleep() or
 * torch_memory_saver.pause() never touch them, only a sleep that names their
 * tag (or every tag) does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "cumem.h"
#include "cumem_backend.h" /* cumem_set_error */

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#define EXPORT __attribute__((visibility("default")))

EXPORT void *my_malloc(ssize_t size, int device, void *stream);
EXPORT void my_free(void *ptr, ssize_t size, int device, void *stream);

/* The callbacks (strong references, replaced under the GIL). */
static PyObject *g_malloc_cb;
static PyObject *g_free_cb;

/* The instance: the process-wide cumem_default(), unless a test chose a
 * backend with _use_backend(). */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static cumem_t *g_cm;
static int g_owned;

static int seed_instance(cumem_t **out) {
  int rc = CUMEM_OK;
  pthread_mutex_lock(&g_lock);
  if (!g_cm) rc = cumem_default(&g_cm);
  *out = g_cm;
  pthread_mutex_unlock(&g_lock);
  return rc;
}

/* Every tag of this module's allocations starts with this. */
#define SEED_TAG_PREFIX "seed:"

/* "seed:" + the calling thread's current tag. A current tag too long for
 * the prefix is refused (CUMEM_EINVAL, detail set), never cut: a cut could
 * fall inside a UTF-8 character, or make two tags one. */
static int seed_tag(char tag[CUMEM_TAG_MAX + 1]) {
  const char *current = cumem_current_tag();
  int n = snprintf(tag, CUMEM_TAG_MAX + 1, SEED_TAG_PREFIX "%s", current);
  if (n >= 0 && n <= CUMEM_TAG_MAX) return CUMEM_OK;
  return cumem_set_error(CUMEM_EINVAL, __FILE__, __LINE__,
                         "cumem_allocator: the current tag has %zu bytes; with the \"" SEED_TAG_PREFIX
                         "\" prefix at most %d fit",
                         strlen(current), CUMEM_TAG_MAX - (int)(sizeof SEED_TAG_PREFIX - 1));
}

/* How many live allocations of `cm` this module made (those under a
 * "seed:" tag); other APIs' allocations in the shared instance are not its
 * own. On failure *failed names what failed, for the error. */
static int seed_allocations(cumem_t *cm, size_t *count, const char **failed) {
  size_t cap = 16, n = 0;
  const char **names = NULL;
  int rc;
  *count = 0;
  for (;;) {
    const char **grown = realloc((void *)names, cap * sizeof *names);
    if (!grown) {
      free((void *)names);
      *failed = "cumem_allocator: the list of tags";
      return CUMEM_ENOHOST;
    }
    names = grown;
    rc = cumem_tags(cm, names, cap, &n);
    if (rc != CUMEM_OK) *failed = "cumem_tags";
    if (rc != CUMEM_OK || n <= cap) break;
    cap = n; /* more tags than room: ask again with enough */
  }
  for (size_t i = 0; rc == CUMEM_OK && i < n; i++) {
    cumem_stats_t s;
    if (strncmp(names[i], SEED_TAG_PREFIX, strlen(SEED_TAG_PREFIX)) != 0)
      continue;
    rc = cumem_stats(cm, names[i], &s);
    if (rc == CUMEM_OK) *count += s.allocations;
    else *failed = "cumem_stats";
  }
  free((void *)names);
  return rc;
}

/* Python may be gone (interpreter shutdown) when PyTorch frees its last
 * blocks; then the callbacks are skipped and only the memory is released. */
static int python_alive(void) {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsInitialized() && !Py_IsFinalizing();
#else
  return Py_IsInitialized() && !_Py_IsFinalizing();
#endif
}

static PyObject *raise_runtime(int code, const char *what) {
  const char *detail = cumem_last_error();
  if (detail[0])
    PyErr_Format(PyExc_RuntimeError, "%s: %s (%s)", what, cumem_strerror(code),
                 detail);
  else
    PyErr_Format(PyExc_RuntimeError, "%s: %s", what, cumem_strerror(code));
  return NULL;
}

/* ---- the CUDAPluggableAllocator pair ------------------------------------ */

EXPORT void *my_malloc(ssize_t size, int device, void *stream) {
  (void)stream;
  cumem_t *cm;
  if (size <= 0 || seed_instance(&cm) != CUMEM_OK) return NULL;

  void *ptr = NULL;
  char tag[CUMEM_TAG_MAX + 1];
  if (seed_tag(tag) != CUMEM_OK || cumem_alloc(cm, &ptr, (size_t)size, device, tag) != CUMEM_OK)
    return NULL; /* PyTorch raises its out-of-memory error; the detail is cumem.last_error()'s */
  cumem_alloc_info_t info;
  if (cumem_query(cm, ptr, &info) != CUMEM_OK) {
    cumem_free(cm, ptr);
    return NULL;
  }

  int ok = 0;
  if (python_alive()) {
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *cb = g_malloc_cb;
    if (!cb) {
      fprintf(stderr, "cumem_allocator: init_module() was not called\n");
    } else {
      Py_INCREF(cb); /* init_module may replace it while it runs */
      PyObject *t = Py_BuildValue(
          "(KKKK)", (unsigned long long)device,
          (unsigned long long)info.size, (unsigned long long)(uintptr_t)ptr,
          (unsigned long long)(uintptr_t)ptr);
      PyObject *r = t ? PyObject_CallFunctionObjArgs(cb, t, NULL) : NULL;
      if (r) ok = 1;
      else PyErr_WriteUnraisable(cb);
      Py_XDECREF(r);
      Py_XDECREF(t);
      Py_DECREF(cb);
    }
    PyGILState_Release(gil);
  }
  if (!ok) {
    cumem_free(cm, ptr);
    return NULL;
  }
  return ptr;
}

EXPORT void my_free(void *ptr, ssize_t size, int device, void *stream) {
  (void)size;
  (void)device;
  cumem_t *cm;
  if (!ptr || seed_instance(&cm) != CUMEM_OK) return;

  if (python_alive()) {
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *cb = g_free_cb;
    if (cb) {
      Py_INCREF(cb);
      PyObject *p = PyLong_FromVoidPtr(ptr);
      PyObject *r = p ? PyObject_CallFunctionObjArgs(cb, p, NULL) : NULL;
      if (r && !(PyTuple_Check(r) && PyTuple_GET_SIZE(r) == 4)) {
        PyErr_Format(PyExc_TypeError,
                     "the free callback must return the 4-tuple (device, "
                     "size, d_mem, handle), not %.100s",
                     Py_TYPE(r)->tp_name);
        Py_CLEAR(r);
      }
      if (!r) PyErr_WriteUnraisable(cb);
      Py_XDECREF(r);
      Py_XDECREF(p);
      Py_DECREF(cb);
    }
    PyGILState_Release(gil);
  }
  /* PyTorch's pointer is the allocation: free it whatever Python said. */
  (void)cumem_free_on_stream(cm, ptr, stream);
}

/* ---- Python functions ---------------------------------------------------- */

static PyObject *py_init_module(PyObject *self, PyObject *args) {
  (void)self;
  PyObject *m, *f;
  if (!PyArg_ParseTuple(args, "OO", &m, &f)) return NULL;
  if (!PyCallable_Check(m) || !PyCallable_Check(f)) {
    PyErr_SetString(PyExc_TypeError, "Both arguments must be callables");
    return NULL;
  }
  Py_INCREF(m);
  Py_INCREF(f);
  Py_XSETREF(g_malloc_cb, m);
  Py_XSETREF(g_free_cb, f);
  Py_RETURN_NONE;
}

/* One non-negative int field of the handle tuple, checked (the 'K' format
 * wrapped 2**70 to 0, which then read as "NULL argument", and let -1
 * through as an address). `least` is the smallest value allowed. */
static int handle_field(PyObject *obj, const char *call, const char *name, unsigned long long least,
                        unsigned long long *out) {
  if (!PyLong_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "%s: %s must be an int, not %.100s", call, name, Py_TYPE(obj)->tp_name);
    return -1;
  }
  unsigned long long v = PyLong_AsUnsignedLongLong(obj);
  if (v == (unsigned long long)-1 && PyErr_Occurred()) {
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "%s: %s = %R is not %s (from %llu to 2**64 - 1)", call, name, obj,
                 least ? "an address" : "a non-negative int", least);
    return -1;
  }
  if (v < least) {
    PyErr_Format(PyExc_ValueError, "%s: %s = %llu is not an address (NULL)", call, name, v);
    return -1;
  }
  *out = v;
  return 0;
}

/* (device, size, d_mem, handle): the handle may be any object (an int here,
 * a list of chunks in vLLM's ROCm build); cumem finds the memory by d_mem. */
static int parse_handle(PyObject *args, const char *call, unsigned long long *d_mem) {
  PyObject *device, *size, *mem, *handle;
  unsigned long long unused;
  if (!PyArg_ParseTuple(args, "OOOO", &device, &size, &mem, &handle)) return -1;
  if (handle_field(device, call, "device", 0, &unused) < 0 || handle_field(size, call, "size", 0, &unused) < 0 ||
      handle_field(mem, call, "d_mem", 1, d_mem) < 0)
    return -1;
  return 0;
}

/* Both calls take vLLM's (device, size, d_mem, handle) and act on the
 * allocation at d_mem, with the GIL released. */
static PyObject *seed_call(PyObject *args, int (*fn)(cumem_t *, void *), const char *name) {
  unsigned long long d_mem;
  cumem_t *cm;
  int rc;
  if (parse_handle(args, name, &d_mem) < 0) return NULL;
  if ((rc = seed_instance(&cm)) != CUMEM_OK)
    return raise_runtime(rc, "cumem_default");
  Py_BEGIN_ALLOW_THREADS
  rc = fn(cm, (void *)(uintptr_t)d_mem);
  Py_END_ALLOW_THREADS
  if (rc != CUMEM_OK) return raise_runtime(rc, name);
  Py_RETURN_NONE;
}

static PyObject *python_create_and_map(PyObject *self, PyObject *args) {
  (void)self;
  return seed_call(args, cumem_create_map, "python_create_and_map");
}

static PyObject *python_unmap_and_release(PyObject *self, PyObject *args) {
  (void)self;
  return seed_call(args, cumem_unmap_release, "python_unmap_and_release");
}

/* Test hooks (not in vLLM's interface). _use_backend(name) opens a private
 * instance on that backend ("host", "cuda"; None = back to the default one);
 * refused while the current instance holds allocations, or may (they could
 * not be counted), or could not be closed: it then stays the one in use. */
static PyObject *py_use_backend(PyObject *self, PyObject *args) {
  (void)self;
  const char *name = NULL;
  if (!PyArg_ParseTuple(args, "z", &name)) return NULL;
  pthread_mutex_lock(&g_lock);
  int rc = CUMEM_OK;
  if (g_cm) {
    size_t live = 0;
    const char *failed = NULL;
    rc = seed_allocations(g_cm, &live, &failed);
    if (rc == CUMEM_OK && live) {
      pthread_mutex_unlock(&g_lock);
      PyErr_Format(PyExc_RuntimeError,
                   "cumem_allocator: %zu allocations are still live", live);
      return NULL;
    }
    if (rc == CUMEM_OK && g_owned) {
      failed = "cumem_close";
      rc = cumem_close(g_cm); /* a failed close leaves the instance usable */
    }
    if (rc != CUMEM_OK) {
      pthread_mutex_unlock(&g_lock);
      return raise_runtime(rc, failed);
    }
    g_cm = NULL;
    g_owned = 0;
  }
  if (name) {
    cumem_options_t opts;
    cumem_options_init(&opts);
    opts.backend = name;
    rc = cumem_open(&g_cm, &opts);
    if (rc == CUMEM_OK) g_owned = 1;
    else g_cm = NULL;
  }
  pthread_mutex_unlock(&g_lock);
  if (rc != CUMEM_OK) return raise_runtime(rc, "cumem_open");
  Py_RETURN_NONE;
}

static PyObject *py_backend_name(PyObject *self, PyObject *noargs) {
  (void)self;
  (void)noargs;
  cumem_t *cm;
  int rc = seed_instance(&cm);
  if (rc != CUMEM_OK) return raise_runtime(rc, "cumem_default");
  return PyUnicode_FromString(cumem_backend_name(cm));
}

static PyObject *py_live_allocations(PyObject *self, PyObject *noargs) {
  (void)self;
  (void)noargs;
  cumem_t *cm;
  size_t live = 0;
  const char *failed = "cumem_default";
  int rc = seed_instance(&cm);
  if (rc == CUMEM_OK) rc = seed_allocations(cm, &live, &failed);
  if (rc != CUMEM_OK) return raise_runtime(rc, failed);
  return PyLong_FromSize_t(live);
}

/* Signatures first in each doc string, for help() and inspect.signature();
 * cumem_allocator.pyi repeats them (a test compares). */
static PyMethodDef module_methods[] = {
    {"init_module", py_init_module, METH_VARARGS,
     "init_module($module, python_malloc, python_free, /)\n--\n\n"
     "Set the callbacks: my_malloc calls python_malloc((device, size, d_mem, "
     "handle)) after mapping the memory, my_free calls python_free(d_mem), "
     "which returns that tuple. Both are held by strong references."},
    {"python_create_and_map", python_create_and_map, METH_VARARGS,
     "python_create_and_map($module, device, size, d_mem, handle, /)\n--\n\n"
     "Back the allocation at d_mem with physical memory again (after "
     "python_unmap_and_release). RuntimeError with the cause on failure."},
    {"python_unmap_and_release", python_unmap_and_release, METH_VARARGS,
     "python_unmap_and_release($module, device, size, d_mem, handle, /)\n--\n\n"
     "Release the physical memory of the allocation at d_mem, keeping its "
     "address; its content is lost. RuntimeError with the cause on failure."},
    {"_use_backend", py_use_backend, METH_VARARGS,
     "_use_backend($module, name, /)\n--\n\n"
     "Test hook: allocate in a private instance on this backend (None: the "
     "process-wide one again). Refused while this module's allocations "
     "live."},
    {"_backend_name", py_backend_name, METH_NOARGS,
     "_backend_name($module, /)\n--\n\n"
     "Test hook: the backend of the instance in use."},
    {"_live_allocations", py_live_allocations, METH_NOARGS,
     "_live_allocations($module, /)\n--\n\n"
     "Test hook: live allocations made through this module (its \"seed:\" "
     "tags) in the instance in use."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "cumem_allocator",
    "vLLM's extension interface (vllm.cumem_allocator) on the cumem core: "
    "init_module, python_create_and_map, python_unmap_and_release, and the C "
    "functions my_malloc / my_free for torch's CUDAPluggableAllocator.",
    -1,
    module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_cumem_allocator(void) {
  return PyModule_Create(&module_def);
}
