/* Fingerprints (src/fingerprint_def.h): the CPU function against an
 * independent, straightforward reference written here from the definition;
 * a known answer that pins the definition; avalanche; and the backend
 * operation, whose result (on cuda: the GPU kernel's) must equal the CPU
 * function's on the same bytes, for odd sizes, odd chunk sizes and every
 * edge position. */
#include "harness.h"
#include "../src/fingerprint.h"
#include "../src/fingerprint_def.h"

#include <sys/mman.h>

#define MiB ((size_t)1 << 20)

/* ---- the reference: byte by byte, from the definition ---- */

static uint64_t ref_rotl32(uint64_t x) { return x << 32 | x >> 32; }
static uint64_t ref_xs(uint64_t h) { return h ^ (h >> 32); }

/* Byte i of the chunk, zero past its end. */
static unsigned ref_byte(const unsigned char *chunk, size_t len, size_t i) { return i < len ? chunk[i] : 0; }

/* Little-endian 64 bits at byte offset `at` of the chunk (zero-padded). */
static uint64_t ref_le64(const unsigned char *chunk, size_t len, size_t at) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)ref_byte(chunk, len, at + (size_t)i) << (8 * i);
  return v;
}

static void ref_chunk(const unsigned char *chunk, size_t len, uint64_t out[2]) {
  const uint64_t K = 0x9E3779B97F4A7C15ull, M0 = 0xBF58476D1CE4E5B9ull, M1 = 0x94D049BB133111EBull,
                 M2 = 0xFF51AFD7ED558CCDull, M3 = 0xC4CEB9FE1A85EC53ull;
  uint64_t a = 0, b = 0;
  for (size_t j = 0; 16 * j < len; j++) {
    uint64_t x0 = ref_le64(chunk, len, 16 * j), x1 = ref_le64(chunk, len, 16 * j + 8);
    uint64_t k = (uint64_t)(j + 1) * K;
    uint64_t ha = ((x0 ^ k) * M0) ^ x1;
    ha = ref_xs(ref_xs(ref_xs(ha) * M1) * M2);
    uint64_t hb = ((x1 ^ ref_rotl32(k)) * M3) ^ x0;
    hb = ref_xs(ref_xs(ref_xs(hb) * M2) * M1);
    a += ha;
    b += hb;
  }
  out[0] = a;
  out[1] = b;
}

static void reference(const unsigned char *data, size_t n, size_t chunk, uint64_t *out) {
  for (size_t c = 0; c * chunk < n; c++) {
    size_t len = n - c * chunk < chunk ? n - c * chunk : chunk;
    ref_chunk(data + c * chunk, len, out + 2 * c);
  }
}

static unsigned char *pattern(size_t n, unsigned seed) {
  unsigned char *p = malloc(n ? n : 1);
  for (size_t i = 0; p && i < n; i++) p[i] = pattern_byte(i, seed);
  return p;
}

/* ---- the CPU function ---- */

TEST(cpu_function_matches_the_reference_for_odd_sizes) {
  static const size_t sizes[] = {0, 1, 7, 15, 16, 17, 31, 32, 33, 100, 4095, 4096, 4097, 65536 + 7, 3 * 4096 + 5};
  static const size_t chunks[] = {16, 48, 64, 4096, 4096 + 16, 1 << 20};
  unsigned char *data = pattern(1 << 17, 3);
  CHECK(data);
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
    for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) {
      size_t n = sizes[i], chunk = chunks[c], nchunks = cumem__fp_chunks(n, chunk);
      uint64_t got[2 * 9000], want[2 * 9000];
      CHECK(nchunks <= 9000);
      memset(got, 0xee, sizeof got);
      cumem__fingerprint_host(data, n, chunk, got);
      reference(data, n, chunk, want);
      if (memcmp(got, want, 2 * nchunks * sizeof *got) != 0) {
        fprintf(stderr, "  n=%zu chunk=%zu: differs from the reference\n", n, chunk);
        CHECK(0);
      }
      CHECK(got[2 * nchunks] == 0xeeeeeeeeeeeeeeeeull); /* nothing written past the last chunk */
    }
  free(data);
}

/* A byte changed anywhere changes both lanes of its chunk, and no other. */
TEST(one_byte_changes_exactly_its_chunk) {
  const size_t chunk = 4096, n = 3 * chunk + 5, nchunks = 4;
  unsigned char *data = pattern(n, 5);
  CHECK(data);
  uint64_t before[8], after[8];
  cumem__fingerprint_host(data, n, chunk, before);
  static const size_t positions[] = {0, 1, 15, 16, 4095, 4096, 4097, 8191, 8192, 12287, 12288, 12292};
  for (size_t i = 0; i < sizeof positions / sizeof *positions; i++)
    for (int bit = 0; bit < 8; bit += 7) {
      size_t p = positions[i];
      data[p] ^= (unsigned char)(1u << bit);
      cumem__fingerprint_host(data, n, chunk, after);
      for (size_t c = 0; c < nchunks; c++) {
        int mine = p / chunk == c;
        int a_same = after[2 * c] == before[2 * c], b_same = after[2 * c + 1] == before[2 * c + 1];
        if (mine ? (a_same || b_same) : !(a_same && b_same)) {
          fprintf(stderr, "  byte %zu bit %d: chunk %zu lanes %s/%s\n", p, bit, c, a_same ? "same" : "changed",
                  b_same ? "same" : "changed");
          CHECK(0);
        }
      }
      data[p] ^= (unsigned char)(1u << bit);
    }
  /* Moving content changes it too: the position keys differ. */
  unsigned char *moved = malloc(n);
  CHECK(moved);
  memcpy(moved, data + 16, chunk - 16);
  memcpy(moved + chunk - 16, data, 16);
  memcpy(moved + chunk, data + chunk, n - chunk);
  cumem__fingerprint_host(moved, n, chunk, after);
  CHECK(after[0] != before[0] && after[1] != before[1] && after[2] == before[2]);
  free(moved);
  free(data);
}

/* Known answers: they pin the definition (a change of it must be deliberate:
 * new values here, a new PTX, and old fingerprints never compared with new
 * ones — they are not kept across processes). */
TEST(known_answers) {
  unsigned char bytes[64];
  for (int i = 0; i < 64; i++) bytes[i] = (unsigned char)i;
  uint64_t got[4], ref[4];
  cumem__fingerprint_host(bytes, 64, 32, got);
  reference(bytes, 64, 32, ref);
  CHECK(memcmp(got, ref, sizeof got) == 0);
  /* (also computed by a Python transcription of the definition) */
  static const uint64_t want[4] = {0xb4488c994709db3bull, 0xf082adbd0e43ae66ull, 0x767f70e5a03991bbull,
                                   0x51fbe5add76eeafaull};
  if (memcmp(got, want, sizeof got) != 0) {
    fprintf(stderr, "  got %#018llx %#018llx %#018llx %#018llx\n", (unsigned long long)got[0],
            (unsigned long long)got[1], (unsigned long long)got[2], (unsigned long long)got[3]);
    CHECK(0);
  }
  unsigned char zero[16] = {0};
  cumem__fingerprint_host(zero, 16, 16, got);
  CHECK(got[0] != 0 && got[1] != 0 && got[0] != got[1]); /* zeros still mix with their key */
}

/* Every input bit of a word flips every output bit of both lanes with
 * probability 1/2 (within 7 standard deviations over 2048 words), for
 * random, zero and low-entropy words at random positions: a weak mixer (too
 * few rounds, a shift that cancels) fails this at once. */
TEST(every_input_bit_flips_every_output_bit_half_the_time) {
  enum { N = 2048 };
  static unsigned flips[128][128];
  memset(flips, 0, sizeof flips);
  uint64_t s = 0x1234567;
  for (int t = 0; t < N; t++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t x0 = s ^ (s >> 29), k = cumem__fp_key(s >> 40);
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t x1 = s ^ (s >> 31);
    if (t % 4 == 0) x0 = x1 = 0;
    if (t % 4 == 1) x0 &= 0xff, x1 = 0;
    uint64_t a = 0, b = 0;
    cumem__fp_mix(k, x0, x1, &a, &b);
    for (int in = 0; in < 128; in++) {
      uint64_t a2 = 0, b2 = 0;
      uint64_t y0 = in < 64 ? x0 ^ (1ull << in) : x0, y1 = in < 64 ? x1 : x1 ^ (1ull << (in - 64));
      cumem__fp_mix(k, y0, y1, &a2, &b2);
      for (int o = 0; o < 64; o++) {
        flips[in][o] += (unsigned)((a ^ a2) >> o & 1);
        flips[in][64 + o] += (unsigned)((b ^ b2) >> o & 1);
      }
    }
  }
  for (int in = 0; in < 128; in++)
    for (int o = 0; o < 128; o++) {
      double p = (double)flips[in][o] / N;
      if (p < 0.42 || p > 0.58) {
        fprintf(stderr, "  input bit %d flips lane %c bit %d with probability %.3f\n", in, o < 64 ? 'A' : 'B',
                o % 64, p);
        CHECK(0);
      }
    }
}

/* ---- the backend operation (the GPU kernel on cuda) ---- */

typedef struct region {
  cumem_backend_t *b;
  uintptr_t va;
  size_t size;
  cumem_handle_t h;
  void *stream;
  uint64_t *out; /* page-locked */
  size_t out_size;
  int mapped, registered;
} region_t;

static int region_open(region_t *r, size_t size) {
  memset(r, 0, sizeof *r);
  int rc = cumem_backend_open(test_backend(), &r->b);
  if (rc) return rc;
  cumem_device_info_t info;
  rc = r->b->device_info(r->b, 0, &info);
  if (rc) return rc;
  r->size = (size + info.granularity - 1) / info.granularity * info.granularity;
  rc = r->b->reserve(r->b, 0, r->size, &r->va);
  if (!rc) rc = r->b->create(r->b, 0, r->size, &r->h);
  if (!rc) rc = r->b->map(r->b, r->va, r->size, r->h);
  r->mapped = !rc;
  if (!rc) rc = r->b->set_access(r->b, r->va, r->size, 0, 0);
  if (!rc) rc = r->b->stream_create(r->b, 0, &r->stream);
  r->out_size = 1 << 20;
  if (!rc) {
    r->out = mmap(NULL, r->out_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r->out == MAP_FAILED) r->out = NULL, rc = CUMEM_ENOHOST;
  }
  if (!rc) rc = r->b->host_register(r->b, r->out, r->out_size);
  r->registered = !rc;
  return rc;
}

static void region_close(region_t *r) {
  if (!r->b) return;
  if (r->registered) r->b->host_unregister(r->b, r->out);
  if (r->out) munmap(r->out, r->out_size);
  if (r->stream) r->b->stream_destroy(r->b, r->stream);
  if (r->mapped) r->b->unmap(r->b, r->va, r->size);
  if (r->h) r->b->release(r->b, r->h);
  if (r->va) r->b->unreserve(r->b, r->va, r->size);
  r->b->destroy(r->b);
}

static int region_write(region_t *r, const void *src, size_t n) {
  int rc = r->b->copy_to_device(r->b, r->va, src, n, r->stream);
  return rc ? rc : r->b->stream_synchronize(r->b, r->stream);
}

/* The backend's fingerprints of the region's first n bytes, in chunks. */
static int device_fingerprint(region_t *r, size_t off, size_t n, size_t chunk) {
  memset(r->out, 0xee, r->out_size);
  int rc = r->b->fingerprint(r->b, r->va + off, chunk, n, r->out, r->stream);
  return rc ? rc : r->b->stream_synchronize(r->b, r->stream);
}

TEST(backend_fingerprints_equal_the_cpu_function) {
  const size_t size = 12 * MiB + 4096;
  region_t r;
  int rc = region_open(&r, size);
  if (rc) region_close(&r);
  CHECK_OK(rc);
  unsigned char *data = pattern(r.size, 11);
  CHECK(data);
  CHECK_OK(region_write(&r, data, r.size));
  static const struct { size_t off, n, chunk; } cases[] = {
      {0, 12 * MiB, 2 * MiB},           /* the engine's shape: whole chunks */
      {0, 12 * MiB, 64 * MiB},          /* one chunk, shorter than chunk_bytes */
      {0, 12 * MiB + 4096, 1 * MiB},    /* a last, short chunk */
      {0, 12 * MiB, 3 * MiB + 16},      /* chunks not a power of two */
      {16, 5 * MiB + 5, 1 * MiB},       /* a tail that is not a whole word */
      {4096, 1, 16},                    /* one byte */
      {32, 17, 16},                     /* a word and a byte */
      {0, 64 * 1024, 16},               /* 4096 one-word chunks */
      {0, 12 * MiB, 48 * 1024},         /* 256 chunks: one block each */
      {0, 12 * MiB, 1024},              /* 12288 chunks: more sums than at first */
  };
  uint64_t *want = malloc(r.out_size);
  CHECK(want);
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    size_t off = cases[i].off, n = cases[i].n, chunk = cases[i].chunk, nchunks = cumem__fp_chunks(n, chunk);
    CHECK(2 * (nchunks + 1) * sizeof *want <= r.out_size);
    CHECK_OK(device_fingerprint(&r, off, n, chunk));
    cumem__fingerprint_host(data + off, n, chunk, want);
    if (memcmp(r.out, want, 2 * nchunks * sizeof *want) != 0) {
      size_t c = 0;
      while (r.out[2 * c] == want[2 * c] && r.out[2 * c + 1] == want[2 * c + 1]) c++;
      fprintf(stderr, "  off %zu n %zu chunk %zu: chunk %zu of %zu differs (%s: %#llx %#llx, cpu: %#llx %#llx)\n",
              off, n, chunk, c, nchunks, test_backend(), (unsigned long long)r.out[2 * c],
              (unsigned long long)r.out[2 * c + 1], (unsigned long long)want[2 * c],
              (unsigned long long)want[2 * c + 1]);
      CHECK(0);
    }
    CHECK(r.out[2 * nchunks] == 0xeeeeeeeeeeeeeeeeull); /* nothing past the last chunk */
  }
  /* The reference agrees too (one case suffices: the CPU function is
   * checked against it above). */
  CHECK_OK(device_fingerprint(&r, 0, 3 * MiB + 100, MiB));
  reference(data, 3 * MiB + 100, MiB, want);
  CHECK(memcmp(r.out, want, 8 * sizeof *want) == 0);
  /* Same bytes, same answer, every time (the kernel's atomic adds land in
   * any order). */
  for (int t = 0; t < 5; t++) {
    CHECK_OK(device_fingerprint(&r, 0, 12 * MiB, 12 * MiB));
    cumem__fingerprint_host(data, 12 * MiB, 12 * MiB, want);
    CHECK(r.out[0] == want[0] && r.out[1] == want[1]);
  }
  /* Two streams, one call each, queued back to back: neither may see the
   * other's sums (on cuda they share device memory, ordered by an event). */
  void *other = NULL;
  CHECK_OK(r.b->stream_create(r.b, 0, &other));
  uint64_t *second = r.out + r.out_size / sizeof *r.out / 2;
  memset(r.out, 0xee, r.out_size);
  int rc1 = r.b->fingerprint(r.b, r.va, MiB, 6 * MiB, r.out, r.stream);
  int rc2 = r.b->fingerprint(r.b, r.va + 6 * MiB, 2 * MiB, 6 * MiB, second, other);
  int rc3 = r.b->stream_synchronize(r.b, r.stream);
  int rc4 = r.b->stream_synchronize(r.b, other);
  r.b->stream_destroy(r.b, other);
  CHECK_OK(rc1 ? rc1 : rc2 ? rc2 : rc3 ? rc3 : rc4);
  cumem__fingerprint_host(data, 6 * MiB, MiB, want);
  CHECK(memcmp(r.out, want, 12 * sizeof *want) == 0);
  cumem__fingerprint_host(data + 6 * MiB, 6 * MiB, 2 * MiB, want);
  CHECK(memcmp(second, want, 6 * sizeof *want) == 0);
  free(want);
  free(data);
  region_close(&r);
}

TEST(backend_fingerprint_refuses_bad_arguments) {
  region_t r;
  int rc = region_open(&r, 2 * MiB);
  if (rc) region_close(&r);
  CHECK_OK(rc);
  CHECK_RC(r.b->fingerprint(r.b, r.va, 0, 4096, r.out, r.stream), CUMEM_EINVAL);
  CHECK_RC(r.b->fingerprint(r.b, r.va, 24, 4096, r.out, r.stream), CUMEM_EINVAL);
  CHECK_RC(r.b->fingerprint(r.b, r.va + 8, 4096, 4096, r.out, r.stream), CUMEM_EINVAL);
  CHECK_RC(r.b->fingerprint(r.b, r.va, 4096, 4096, NULL, r.stream), CUMEM_EINVAL);
  CHECK(strstr(cumem_last_error(), "out = NULL") != NULL);
  CHECK_OK(r.b->fingerprint(r.b, r.va, 4096, 0, r.out, r.stream)); /* nothing to do */
  CHECK_OK(r.b->stream_synchronize(r.b, r.stream));
  if (!strcmp(test_backend(), "host")) /* it checks what it can: the range is mapped */
    CHECK_RC(r.b->fingerprint(r.b, r.va, 4096, r.size + 4096, r.out, r.stream), CUMEM_EINVAL);
  region_close(&r);
}

RUN_TESTS("fingerprint",
          T(cpu_function_matches_the_reference_for_odd_sizes),
          T(one_byte_changes_exactly_its_chunk),
          T(known_answers),
          T(every_input_bit_flips_every_output_bit_half_the_time),
          T(backend_fingerprints_equal_the_cpu_function),
          T(backend_fingerprint_refuses_bad_arguments))
