/* Fuzz target for the public C API on the host backend.
 *
 * The input bytes are the choices of one single-threaded episode of the
 * reference model (tests/fuzz/api_model.h): the first choices pick the
 * options (chunking, copy segments, zero-on-wake, retention, preparer
 * threads), then each operation takes a byte for its kind and a few for its
 * arguments: sizes, devices, peer masks, tags (named, current, empty,
 * too long, never used), offload sets, offsets, bad and stale pointers
 * (double frees), and injected backend failures (which call, which error,
 * one-shot or persistent). The episode ends when the input does; the model
 * then wakes everything, checks that every offloaded byte came back, frees
 * everything and checks that no backend object is left.
 *
 * A model violation traps (__builtin_trap), so libFuzzer keeps the input as
 * a crash; AddressSanitizer and UBSan catch the rest.
 *
 * Built two ways (tests/CMakeLists.txt):
 *   fuzz_api     clang -fsanitize=fuzzer,address,undefined, with the library
 *                compiled in, when CUMEM_FUZZ=ON (scripts/fuzz.sh);
 *   fuzz_replay  any compiler, with main() below: replays files and
 *                directories of inputs (tests/fuzz/regressions, the corpus)
 *                so that CI runs every regression without a fuzzer.
 *                `fuzz_replay --record SEED OPS FILE` writes the choices of
 *                test_stress's PRNG episode SEED (OPS operations) as an
 *                input: how the seed corpus was made, and how a failing
 *                stress seed becomes a regression input. */
#include "api_model.h"

#include <stddef.h>
#include <stdint.h>

/* At most this many operations per input (inputs are short anyway; this
 * bounds the time one input can take). */
#define FUZZ_MAX_OPS 2000

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  model_host_env(); /* the emulated machine the model expects */
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  src_t s;
  src_init_bytes(&s, data, size);
  int rc = model_episode(&s, "fuzz", 0, FUZZ_MAX_OPS, NULL, NULL);
  if (rc) __builtin_trap(); /* the model printed what was violated */
  return 0;
}

#ifdef CUMEM_FUZZ_REPLAY
#include <dirent.h>
#include <sys/stat.h>

/* Replay one file; returns 1 when its episode violates the model. Replay
 * runs the episode in this process: a violation is reported, not trapped,
 * so that every file is tried. */
static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    return 1;
  }
  uint8_t *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n == cap) {
      cap = cap ? cap * 2 : 4096;
      uint8_t *b = realloc(buf, cap);
      if (!b) break;
      buf = b;
    }
    size_t k = fread(buf + n, 1, cap - n, f);
    if (k == 0) break;
    n += k;
  }
  fclose(f);
  src_t s;
  src_init_bytes(&s, buf, n);
  long ops = 0;
  int rc = model_episode(&s, path, 0, FUZZ_MAX_OPS, &ops, NULL);
  free(buf);
  printf("%s %s (%zu bytes, %ld operations)\n", rc ? "FAIL" : "ok  ", path, n, ops);
  fflush(stdout);
  return rc != 0;
}

static int is_input(const char *name) {
  size_t len = strlen(name);
  return name[0] != '.' && !(len > 3 && strcmp(name + len - 3, ".md") == 0);
}

static int record(const char *seed, const char *ops, const char *path) {
  src_t s;
  src_init_rng(&s, strtoull(seed, NULL, 0), 1);
  int rc = model_episode(&s, "record", 0, strtol(ops, NULL, 0), NULL, NULL);
  FILE *f = fopen(path, "wb");
  int ok = f && s.rec && fwrite(s.rec, 1, s.rec_n, f) == s.rec_n;
  if (f) fclose(f);
  printf("%s: %zu bytes of choices%s\n", path, s.rec_n, rc ? " (the episode FAILS)" : "");
  src_free(&s);
  return !ok;
}

int main(int argc, char **argv) {
  LLVMFuzzerInitialize(&argc, &argv);
  if (argc == 5 && strcmp(argv[1], "--record") == 0) return record(argv[2], argv[3], argv[4]);
  int files = 0, failed = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) != 0) {
      fprintf(stderr, "no such file or directory: %s\n", argv[i]);
      failed++;
      continue;
    }
    if (!S_ISDIR(st.st_mode)) {
      files++;
      failed += replay_file(argv[i]);
      continue;
    }
    struct dirent **list;
    int n = scandir(argv[i], &list, NULL, alphasort);
    for (int k = 0; k < n; k++) {
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", argv[i], list[k]->d_name);
      if (is_input(list[k]->d_name) && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
        files++;
        failed += replay_file(path);
      }
      free(list[k]);
    }
    if (n >= 0) free(list);
  }
  printf("%d inputs replayed, %d failed\n", files, failed);
  return failed ? 1 : 0;
}
#endif
