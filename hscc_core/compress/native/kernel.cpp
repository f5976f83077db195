// One HSCC layer per call: the region program of program.py executed in compiled code.
//
// Work items are (region, row tile) pairs shared over OpenMP threads (dynamic schedule, largest
// first); inside a work item one thread works on cache-resident buffers: im2col of the tile into
// A, the program's GEMM steps (A -> Z -> Y; the AVX-512 register kernel below, or single-threaded
// BLAS where AVX-512 is absent), then one write-out pass that adds the bias, scatters Y's columns
// to their channels and fills the constant channels (with AVX-512: permutes for rows of up to 64
// columns, one masked gather per 16 channels above). Regions that read every input channel in
// order (the output side) skip the im2col copy: the GEMM reads the input in place (direct_rows).
// Regions with scattered channel groups (the input side's clusters) gather their input window
// once per image into per-group planes and copy A's rows from there (im2col_planes). No padding
// and no extra MACs: exactly the program's steps, which are the layer's analytical MACs.
//
// Built by build.py with -fopenmp: ATen's own headers would otherwise compile the OpenMP pragmas
// away and the layer would run on one thread. The OpenMP runtime is the one torch already loaded.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include <immintrin.h>
#include <omp.h>

extern "C" {
// Fortran BLAS as exported by libtorch_cpu (MKL or OpenBLAS); column-major.
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
// MKL only (weak: absent elsewhere): the BLAS thread count of the calling thread (C interface;
// the lower-case name is the Fortran one, which takes a pointer).
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

namespace {

enum Buffer { kA = 0, kZ = 1, kY = 2 };

struct Geometry {
  int64_t in_c, out_c, kh, kw, sh, sw, dh, dw, pad_t, pad_l, ho, wo;
};

struct Region {
  int64_t h0, h1, w0, w1, gather_off, gather_len, group_off, n_groups, step_off, n_steps, nz, ny,
      out_off, const_off, n_const, macs_per_position;
};

struct Step {
  int64_t src, s0, s1, dst, d0, d1, accumulate, weight_off, split, seg;
};

struct Input {
  const float* data;
  int64_t sn, sc, sh, sw, h, w;
};

// ---- GEMM on panel-packed weights ----------------------------------------------------------------
//
// program.pack() stores every step's weight (m x k) as panels of kPanel output columns: panel p
// holds columns [16 p, 16 p + w_p) as a (k x w_p) row-major block (w_p = 16, the last one the
// rest), one panel after the other: the same m x k numbers, no padding. A panel row is one vector
// of 16 output columns, so the kernel below streams the weights in order, broadcasts one src value
// per row and keeps RB rows x NP panels of partial sums in registers for the whole k loop: with a
// handful of rows (batch 1: the positions of one region) each weight is read once from memory and
// no horizontal sums are needed. A last panel of 9-15 columns masks its missing lanes (they load
// and store nothing, so the MACs are exactly rows x m x k); one of at most 8 (4, 2) columns is a
// split panel instead (split_block: 2, 4 or 8 source columns folded into the idle lanes; measured
// on G4 K4 6x at batch 32: the five layers 93 -> 81 ms of CPU time, conv1 27 -> 20 ms). BLAS runs
// the full panels (one call per panel) where AVX-512 is absent, plain loops the split ones
// (measured: the register kernel is as fast or faster than BLAS for tall tiles too).

constexpr int kPanel = 16;
// Software prefetch distance along each weight stream. At batch 1 a region's weights are read once
// for a handful of positions and come from memory (the classifier evicts them between forwards);
// the hardware streamer restarts at every 4 KB page and every new panel. Measured on the real
// model at 224 px, 1 thread, alternating builds: G4 K4 6x 1.27-1.32x -> 1.35-1.39x at batch 1, G8
// K1 0.93-0.98x -> 1.00-1.05x; batch 32 unchanged (256 bytes: no gain).
constexpr int kPrefetchBytes = 4096;

// One panel of a GEMM step: its weights (k rows of width floats), where its columns go (row 0 of
// the row block; rows ldd apart) and whether they are added to what is there. split > 1: a split
// panel (split_block; laid out per run of the source as program.panels says).
struct PanelJob {
  const float* w;
  int width;
  float* dst;
  int ldd;
  bool acc;
  int split;
};

template <int RB, int NP>
__attribute__((target("avx512f"))) void panel_block(int nseg, int len, const float* const* rows, int row_stride,
                                                    const PanelJob* jobs, int row0) {
  // Every loop over RB or NP is unrolled (pragmas): otherwise GCC keeps the accumulators in memory.
  __m512 s[RB][NP];
  const float* pw[NP];
  __mmask16 mask[NP];
  int width[NP];
#pragma GCC unroll 16
  for (int p = 0; p < NP; ++p) {
    width[p] = jobs[p].width;
    mask[p] = static_cast<__mmask16>((1u << width[p]) - 1u);
    pw[p] = jobs[p].w;
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) s[r][p] = _mm512_setzero_ps();
  for (int seg = 0; seg < nseg; ++seg) {
    const float* src[RB];
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) src[r] = rows[r * row_stride + seg];
    for (int i = 0; i < len; ++i) {
      __m512 wv[NP];
#pragma GCC unroll 16
      for (int p = 0; p < NP; ++p) {
        _mm_prefetch(reinterpret_cast<const char*>(pw[p]) + kPrefetchBytes, _MM_HINT_T0);
        wv[p] = _mm512_maskz_loadu_ps(mask[p], pw[p]);
        pw[p] += width[p];
      }
#pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) {
        const __m512 a = _mm512_set1_ps(src[r][i]);
#pragma GCC unroll 16
        for (int p = 0; p < NP; ++p) s[r][p] = _mm512_fmadd_ps(a, wv[p], s[r][p]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p) {
      float* d = jobs[p].dst + static_cast<int64_t>(row0 + r) * jobs[p].ldd;
      const __m512 v = jobs[p].acc ? _mm512_add_ps(s[r][p], _mm512_maskz_loadu_ps(mask[p], d)) : s[r][p];
      _mm512_mask_storeu_ps(d, mask[p], v);
    }
}

// A split panel (program.tail_split, program.panels): the last panel of a step, w <= 16 / G
// columns, holds in lane G c + g the weight of column c for source column G i + g. One broadcast of
// G consecutive source values per row (a single load: vbroadcastsd / vbroadcastf32x4 / x8) fills
// every lane, so a narrow last panel costs 1 / G of the vector FMAs a masked one did; the G partial
// sums of each column are added once at the end. A run whose length is not a multiple of G ends
// with single columns (w weights expanded into lanes G c, one broadcast value).
template <int RB, int G>
__attribute__((target("avx512f,avx512dq"))) void split_block(int nseg, int len, const float* const* rows,
                                                             int row_stride, const PanelJob* job, int row0) {
  static_assert(G == 2 || G == 4 || G == 8, "split panels fold 2, 4 or 8 source columns");
  __m512 s[RB];
  const int lanes = job->width * G, folded = len / G * G;
  const __mmask16 mask = static_cast<__mmask16>((1u << lanes) - 1u);
  const __mmask16 firsts = static_cast<__mmask16>((G == 2 ? 0x5555u : G == 4 ? 0x1111u : 0x0101u));
  const float* pw = job->w;
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r) s[r] = _mm512_setzero_ps();
  for (int seg = 0; seg < nseg; ++seg) {
    const float* src[RB];
#pragma GCC unroll 16
    for (int r = 0; r < RB; ++r) src[r] = rows[r * row_stride + seg];
    for (int i = 0; i < folded; i += G) {
      const __m512 wv = _mm512_maskz_loadu_ps(mask, pw);
      pw += lanes;
#pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) {
        __m512 a;
        if constexpr (G == 2) {
          double pair;
          std::memcpy(&pair, src[r] + i, sizeof pair);
          a = _mm512_castpd_ps(_mm512_set1_pd(pair));
        } else if constexpr (G == 4) {
          a = _mm512_broadcast_f32x4(_mm_loadu_ps(src[r] + i));
        } else {
          a = _mm512_broadcast_f32x8(_mm256_loadu_ps(src[r] + i));
        }
        s[r] = _mm512_fmadd_ps(a, wv, s[r]);
      }
    }
    for (int i = folded; i < len; ++i) {
      const __m512 wv = _mm512_maskz_expandloadu_ps(static_cast<__mmask16>(firsts & mask), pw);
      pw += job->width;
#pragma GCC unroll 16
      for (int r = 0; r < RB; ++r) s[r] = _mm512_fmadd_ps(_mm512_set1_ps(src[r][i]), wv, s[r]);
    }
  }
  const __mmask16 out = static_cast<__mmask16>((1u << job->width) - 1u);
#pragma GCC unroll 16
  for (int r = 0; r < RB; ++r) {
    __m512 v = _mm512_add_ps(s[r], _mm512_permute_ps(s[r], 0xB1));  // + the neighbouring lane
    if constexpr (G >= 4) v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));  // + the pair beside
    if constexpr (G == 8) v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));  // + the quad beside
    v = _mm512_maskz_compress_ps(firsts, v);  // lane G c -> lane c
    float* d = job->dst + static_cast<int64_t>(row0 + r) * job->ldd;
    if (job->acc) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(out, d));
    _mm512_mask_storeu_ps(d, out, v);
  }
}

constexpr int kMaxRowBlock = 12;  // 12 rows x 2 panels = 24 of the 32 vector registers
using PanelBlock = void (*)(int, int, const float* const*, int, const PanelJob*, int);
template <int NP, int... RB>
constexpr std::array<PanelBlock, sizeof...(RB)> panel_table(std::integer_sequence<int, RB...>) {
  return {panel_block<RB + 1, NP>...};
}
template <int G, int... RB>
constexpr std::array<PanelBlock, sizeof...(RB)> split_table(std::integer_sequence<int, RB...>) {
  return {split_block<RB + 1, G>...};
}
constexpr auto kPanel1 = panel_table<1>(std::make_integer_sequence<int, kMaxRowBlock>{});
constexpr auto kPanel2 = panel_table<2>(std::make_integer_sequence<int, kMaxRowBlock>{});
constexpr auto kSplit2 = split_table<2>(std::make_integer_sequence<int, kMaxRowBlock>{});
constexpr auto kSplit4 = split_table<4>(std::make_integer_sequence<int, kMaxRowBlock>{});
constexpr auto kSplit8 = split_table<8>(std::make_integer_sequence<int, kMaxRowBlock>{});

// For every job: dst[rows x width] (+)= src[rows x k] w^T, k = nseg x len: row r of src is the
// nseg runs of len floats at rows[r * row_stride + 0 .. nseg) (an im2col row read in place from
// the input, or one run of a buffer row). Jobs two at a time (each src value is broadcast once
// for both; a split panel alone), the rows in even blocks of at most kMaxRowBlock.
void panel_gemm(int n_rows, int nseg, int len, const float* const* rows, int row_stride, const PanelJob* jobs,
                int n_jobs) {
  const int blocks = (n_rows + kMaxRowBlock - 1) / kMaxRowBlock;
  for (int j = 0; j < n_jobs;) {
    const int split = jobs[j].split, pair = split == 1 && j + 1 < n_jobs && jobs[j + 1].split == 1;
    const auto& table = split == 8   ? kSplit8
                         : split == 4 ? kSplit4
                         : split == 2 ? kSplit2
                         : pair       ? kPanel2
                                      : kPanel1;
    for (int b = 0, r = 0; b < blocks; ++b) {
      const int rb = (n_rows - r) / (blocks - b);
      table[rb - 1](nseg, len, rows + static_cast<int64_t>(r) * row_stride, row_stride, jobs + j, r);
      r += rb;
    }
    j += 1 + pair;
  }
}

// The jobs of a step whose m x k weights are in panels (module comment above), appended to jobs.
void add_jobs(std::vector<PanelJob>& jobs, const float* panels, int m, int k, float* dst, int ldd, bool acc,
              int split) {
  for (int j = 0; j < m; j += kPanel)
    jobs.push_back({panels + static_cast<int64_t>(j) * k, std::min(kPanel, m - j), dst + j, ldd, acc,
                    j + kPanel >= m ? split : 1});
}

bool have_avx512() {
  // DQ for split_block's 8-float broadcast (every AVX-512 CPU but the Xeon Phi has it)
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return ok;
}

// dst[rows x m] (leading dim ldd) (+)= src[rows x k] (leading dim lds) w^T, w (m x k) in panels,
// by BLAS once per panel (CPUs without AVX-512); a split last panel by plain loops.
inline void blas_rows(int rows, int m, int k, const float* panels, const float* src, int lds, bool acc,
                      float* dst, int ldd, int split, int seg) {
  if (rows <= 0 || m <= 0) return;
  if (k <= 0) {
    if (!acc)
      for (int r = 0; r < rows; ++r) std::memset(dst + (int64_t)r * ldd, 0, sizeof(float) * m);
    return;
  }
  const char tn = 'N';
  const float one = 1.f, beta = acc ? 1.f : 0.f;
  for (int j = 0; j < m; j += kPanel) {
    const int w = std::min(kPanel, m - j);
    if (split > 1 && j + kPanel >= m) {  // a split panel (split_block's layout), runs of seg columns
      const float* pw = panels + static_cast<int64_t>(j) * k;
      const int folded = seg / split * split;
      for (int r = 0; r < rows; ++r)
        for (int c = 0; c < w; ++c) {
          float sum = 0.f;
          for (int s0 = 0; s0 < k; s0 += seg) {
            const float* a = src + static_cast<int64_t>(r) * lds + s0;
            const float* ws = pw + static_cast<int64_t>(s0) * w;
            for (int i = 0; i < folded; ++i) sum += a[i] * ws[(i / split) * split * w + c * split + i % split];
            for (int i = folded; i < seg; ++i) sum += a[i] * ws[folded * w + (i - folded) * w + c];
          }
          float& d = dst[static_cast<int64_t>(r) * ldd + j + c];
          d = acc ? d + sum : sum;
        }
      continue;
    }
    // Column-major view: dst^T (w x rows) = panel (w x k, leading dim w) * src^T (k x rows).
    sgemm_(&tn, &tn, &w, &rows, &k, &one, panels + static_cast<int64_t>(j) * k, &w, src, &lds, &beta,
           dst + j, &ldd);
  }
}

// Short runs (a few channels of an 11 x 11 first layer) are copied inline: a memcpy call per run
// cost more than the copy itself.
inline void copy_run(float* dst, const float* src, int64_t n) {
  if (n > 64) {
    std::memcpy(dst, src, sizeof(float) * n);
    return;
  }
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

// dst[c] = src[idx[c]] for c < n, 16 channels per vector gather: a cluster's channels of one tap
// (input side: clusters are scattered channel sets). The scalar loop it replaces was most of the
// input side's im2col.
__attribute__((target("avx512f"))) void gather_run_avx512(float* dst, const float* src, const int32_t* idx,
                                                          int64_t n) {
  int64_t c = 0;
  for (; c + 16 <= n; c += 16)
    _mm512_storeu_ps(dst + c, _mm512_i32gather_ps(_mm512_loadu_si512(idx + c), src, 4));
  if (c < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - c)) - 1u);
    const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, _mm512_maskz_loadu_epi32(m, idx + c), src, 4);
    _mm512_mask_storeu_ps(dst + c, m, v);
  }
}

// One input pixel's channels of a gather group into dst (gc floats): ch the group's channels,
// idx32 their int32 offsets for the vector gather (null: the scalar loop), pixel the pixel's first
// channel. A consecutive group on channels-last input is one copy.
inline void gather_pixel(float* dst, const float* pixel, const int64_t* ch, const int32_t* idx32, bool contig,
                         int64_t sc, int64_t gc) {
  if (contig && sc == 1)
    copy_run(dst, pixel + ch[0], gc);
  else if (idx32 != nullptr)
    gather_run_avx512(dst, pixel, idx32, gc);
  else
    for (int64_t c = 0; c < gc; ++c) dst[c] = pixel[ch[c] * sc];
}

// The output position of a region's row tile, row by row: rows are (image, y, x) in row-major
// order over the region's window. One division at the tile's first row, then increments: two
// 64-bit divisions per row (im2col, direct_rows and the write-out each did them) were a visible
// part of conv1's time, whose regions have a few hundred rows of little work each.
struct Cursor {
  int64_t n, oy, ox, h0, w0, w1, h1;
  Cursor(const Region& r, int64_t p) : h0(r.h0), w0(r.w0), w1(r.w1), h1(r.h1) {
    const int64_t wr = r.w1 - r.w0, per_image = (r.h1 - r.h0) * wr, rem = p % per_image;
    n = p / per_image;
    oy = r.h0 + rem / wr;
    ox = r.w0 + rem % wr;
  }
  void next() {
    if (++ox < w1) return;
    ox = w0;
    if (++oy < h1) return;
    oy = h0;
    ++n;
  }
};

// Rows [row0, row0 + rows) of a region's im2col matrix into A (leading dim d). idx32: the
// region's gather as int32 element offsets (channel x channel stride) for gather_run_avx512, or
// null (the scalar gather).
void im2col(const Input& x, const Geometry& g, const Region& r, const int64_t* gather, const int32_t* idx32,
            const int64_t* groups, const char* contiguous, int64_t row0, int rows, float* a,
            int64_t d) {
  Cursor pos(r, row0);
  for (int t = 0; t < rows; ++t, pos.next()) {
    const int64_t oy = pos.oy, ox = pos.ox;
    float* arow = a + t * d;
    const float* base_n = x.data + pos.n * x.sn;
    for (int64_t gi = 0; gi < r.n_groups; ++gi) {
      const int64_t gs = groups[2 * gi], ge = groups[2 * gi + 1], gc = ge - gs;
      const int64_t* ch = gather + gs;
      float* gcol = arow + gs * g.kh * g.kw;
      const bool contig = contiguous[gi];
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        const int64_t iy = oy * g.sh - g.pad_t + ky * g.dh;
        float* trow = gcol + ky * g.kw * gc;
        if (iy < 0 || iy >= x.h) {
          std::memset(trow, 0, sizeof(float) * g.kw * gc);
          continue;
        }
        const float* base_y = base_n + iy * x.sh;
        const int64_t ix0 = ox * g.sw - g.pad_l, ix1 = ix0 + (g.kw - 1) * g.dw;
        // Channels-last input, all channels, no dilation, row inside the map: one copy.
        if (contig && g.dw == 1 && x.sw == gc && x.sc == 1 && ix0 >= 0 && ix1 < x.w) {
          copy_run(trow, base_y + ix0 * x.sw + ch[0], g.kw * gc);
          continue;
        }
        for (int64_t kx = 0; kx < g.kw; ++kx) {
          const int64_t ix = ix0 + kx * g.dw;
          float* dst = trow + kx * gc;
          if (ix < 0 || ix >= x.w)
            std::memset(dst, 0, sizeof(float) * gc);
          else
            gather_pixel(dst, base_y + ix * x.sw, ch, idx32 == nullptr ? nullptr : idx32 + gs, contig, x.sc, gc);
        }
      }
    }
  }
}

// im2col for a region with scattered gather groups (the input side's clusters), through planes:
// the region's input window is gathered once per image into one plane per group, (y, x, channel)
// with the group's channels consecutive and zeros outside the map; then each (row, group, tap
// row) of A is one contiguous copy of kw x gc floats (no dilation along x; one per tap with it).
// The per-row gather it replaces read every input pixel once per tap that covers it (25 times
// for a 5 x 5 layer at stride 1) with a vector gather each time. planes: room for
// plane_h(g, r) x plane_w(g, r) x the region's gather length floats.
int64_t plane_h(const Geometry& g, const Region& r) { return (r.h1 - r.h0 - 1) * g.sh + (g.kh - 1) * g.dh + 1; }
int64_t plane_w(const Geometry& g, const Region& r) { return (r.w1 - r.w0 - 1) * g.sw + (g.kw - 1) * g.dw + 1; }

// Plane rows [py0, py1) of image n (module comment above).
void fill_planes(const Input& x, const Geometry& g, const Region& r, const int64_t* gather, const int32_t* idx32,
                 const int64_t* groups, const char* contiguous, int64_t n, int64_t py0, int64_t py1, float* planes) {
  const int64_t ph = plane_h(g, r), pw = plane_w(g, r), iy_org = r.h0 * g.sh - g.pad_t, ix_org = r.w0 * g.sw - g.pad_l;
  const float* base_n = x.data + n * x.sn;
  for (int64_t gi = 0; gi < r.n_groups; ++gi) {
    const int64_t gs = groups[2 * gi], ge = groups[2 * gi + 1], gc = ge - gs;
    const int64_t* ch = gather + gs;
    float* plane = planes + gs * ph * pw;
    for (int64_t py = py0; py < py1; ++py) {
      const int64_t iy = iy_org + py;
      float* prow = plane + py * pw * gc;
      if (iy < 0 || iy >= x.h) {
        std::fill(prow, prow + pw * gc, 0.f);
        continue;
      }
      const float* base_y = base_n + iy * x.sh;
      for (int64_t px = 0; px < pw; ++px) {
        const int64_t ix = ix_org + px;
        float* dst = prow + px * gc;
        if (ix < 0 || ix >= x.w)
          std::fill(dst, dst + gc, 0.f);
        else
          gather_pixel(dst, base_y + ix * x.sw, ch, idx32 == nullptr ? nullptr : idx32 + gs, contiguous[gi], x.sc, gc);
      }
    }
  }
}

void im2col_planes(const Input& x, const Geometry& g, const Region& r, const int64_t* gather, const int32_t* idx32,
                   const int64_t* groups, const char* contiguous, int64_t row0, int rows, float* a, int64_t d,
                   float* planes) {
  const int64_t ph = plane_h(g, r), pw = plane_w(g, r);
  Cursor pos(r, row0);
  const Cursor last(r, row0 + rows - 1);
  int64_t filled = -1;  // the image whose plane rows are filled
  for (int t = 0; t < rows; ++t, pos.next()) {
    if (pos.n != filled) {  // the plane rows this tile's rows of image pos.n read
      const int64_t oy_end = last.n == pos.n ? last.oy + 1 : r.h1;
      fill_planes(x, g, r, gather, idx32, groups, contiguous, pos.n, (pos.oy - r.h0) * g.sh,
                  std::min(ph, (oy_end - 1 - r.h0) * g.sh + (g.kh - 1) * g.dh + 1), planes);
      filled = pos.n;
    }
    const int64_t py = (pos.oy - r.h0) * g.sh, px = (pos.ox - r.w0) * g.sw;
    float* arow = a + t * d;
    for (int64_t gi = 0; gi < r.n_groups; ++gi) {
      const int64_t gs = groups[2 * gi], gc = groups[2 * gi + 1] - gs;
      const float* plane = planes + gs * ph * pw;
      float* gcol = arow + gs * g.kh * g.kw;
      for (int64_t ky = 0; ky < g.kh; ++ky) {
        const float* src = plane + ((py + ky * g.dh) * pw + px) * gc;
        float* trow = gcol + ky * g.kw * gc;
        if (g.dw == 1) {
          copy_run(trow, src, g.kw * gc);
        } else {
          for (int64_t kx = 0; kx < g.kw; ++kx) copy_run(trow + kx * gc, src + kx * g.dw * gc, gc);
        }
      }
    }
  }
}

// im2col without the copy, for a region whose one gather group is every input channel in order
// (channels-last input, no dilation along x): row t's columns for tap row ky are the kw x C floats
// of the input from (iy, ix0) on, one run in memory. rows[t * kh + ky] points at that run; a run
// outside the map points at zeros, and one clipped by the left or right edge is assembled in A's
// row (zeros where the window leaves the map), as im2col would.
void direct_rows(const Input& x, const Geometry& g, const Region& r, int64_t ch0, int64_t row0, int n_rows, float* a,
                 int64_t d, const float* zeros, const float** rows) {
  const int64_t run = g.kw * x.sw, kh = g.kh, tap_step = g.dh * x.sh;
  Cursor pos(r, row0);
  for (int t = 0; t < n_rows; ++t, pos.next()) {
    const int64_t oy = pos.oy, ix0 = pos.ox * g.sw - g.pad_l, ix1 = ix0 + g.kw - 1;
    const int64_t iy0 = oy * g.sh - g.pad_t;
    const float* base = x.data + pos.n * x.sn + ch0;
    if (ix0 >= 0 && ix1 < x.w && iy0 >= 0 && iy0 + (kh - 1) * g.dh < x.h) {
      // The window inside the map (most rows): kh pointers tap_step apart, in a loop the compiler
      // keeps in registers (the general one below re-read the geometry at every tap; it was a
      // tenth of conv1's time at batch 1, whose rows do little else).
      const float* first = base + iy0 * x.sh + ix0 * x.sw;
      const float** slot = rows + static_cast<int64_t>(t) * kh;
      for (int64_t ky = 0; ky < kh; ++ky) slot[ky] = first + ky * tap_step;
      continue;
    }
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      const int64_t iy = oy * g.sh - g.pad_t + ky * g.dh;
      const float** slot = rows + static_cast<int64_t>(t) * g.kh + ky;
      if (iy < 0 || iy >= x.h) {
        *slot = zeros;
      } else if (ix0 >= 0 && ix1 < x.w) {
        *slot = base + iy * x.sh + ix0 * x.sw;
      } else {
        // Taps [lo, hi) are inside the map: one copy between two zero fills (taps are x.sw
        // floats apart, no dilation here), not one call per tap: the grey conv1's taps are one
        // float each, and its edge rows cost more than the window copies they replace.
        float* dst = a + t * d + ky * run;
        const int64_t lo = std::clamp<int64_t>(-ix0, 0, g.kw), hi = std::clamp<int64_t>(x.w - ix0, lo, g.kw);
        std::fill(dst, dst + lo * x.sw, 0.f);
        copy_run(dst + lo * x.sw, base + iy * x.sh + (ix0 + lo) * x.sw, (hi - lo) * x.sw);
        std::fill(dst + hi * x.sw, dst + run, 0.f);
        *slot = dst;
      }
    }
  }
}

// One output row (channels-last, out_c channels) from a row of Y: o[c] = y[src[c]] + add[c], with
// src[c] < 0 for a constant channel (add[c] is then its value). One masked gather per 16 channels
// instead of a scalar scatter per channel (the write-out was a fifth of conv1's time).
__attribute__((target("avx512f"))) void write_row_avx512(float* o, const float* yr, const int32_t* src,
                                                         const float* add, int64_t out_c) {
  for (int64_t c = 0; c < out_c; c += 16) {
    const __mmask16 lanes = out_c - c >= 16 ? static_cast<__mmask16>(0xFFFF)
                                            : static_cast<__mmask16>((1u << (out_c - c)) - 1u);
    const __m512i idx = _mm512_maskz_loadu_epi32(lanes, src + c);
    const __mmask16 from_y = _mm512_mask_cmpge_epi32_mask(lanes, idx, _mm512_setzero_si512());
    const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), from_y, idx, yr, 4);
    _mm512_mask_storeu_ps(o + c, lanes, _mm512_add_ps(v, _mm512_maskz_loadu_ps(lanes, add + c)));
  }
}

// write_row_avx512 for a Y row of at most 64 columns (conv1's regions: a few thousand rows of
// 64 channels at 224 px): Y's four vectors are loaded once and every output vector is picked from
// them by two two-source permutes and a blend, where the gather cost a load per lane (measured on
// G4 K4 6x: the write-out was a seventh of conv1's time).
__attribute__((target("avx512f"))) void write_row_permute(float* o, const float* yr, const int32_t* src,
                                                          const float* add, int64_t out_c, int64_t ny) {
  __m512 y[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) {
    const int64_t left = ny - 16 * v;
    const __mmask16 m = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                        : left > 0 ? static_cast<__mmask16>((1u << left) - 1u)
                                   : static_cast<__mmask16>(0);
    y[v] = _mm512_maskz_loadu_ps(m, yr + 16 * v);
  }
  const __m512i bit5 = _mm512_set1_epi32(32);
  for (int64_t c = 0; c < out_c; c += 16) {
    const __mmask16 lanes = out_c - c >= 16 ? static_cast<__mmask16>(0xFFFF)
                                            : static_cast<__mmask16>((1u << (out_c - c)) - 1u);
    const __m512i idx = _mm512_maskz_loadu_epi32(lanes, src + c);
    const __mmask16 from_y = _mm512_mask_cmpge_epi32_mask(lanes, idx, _mm512_setzero_si512());
    const __m512 lo = _mm512_permutex2var_ps(y[0], idx, y[1]);  // columns 0-31 (index bits 0-4)
    const __m512 hi = _mm512_permutex2var_ps(y[2], idx, y[3]);  // columns 32-63
    const __m512 v = _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, bit5), lo, hi);
    _mm512_mask_storeu_ps(o + c, lanes, _mm512_add_ps(_mm512_maskz_mov_ps(from_y, v), _mm512_maskz_loadu_ps(lanes, add + c)));
  }
}

// A thread's work buffers, kept from call to call (OpenMP's pool threads and the caller's thread
// live as long as the process): fresh vectors cost an allocation and a zero fill of up to a few
// hundred KB per layer and thread, a visible part of a batch-1 forward. Every element is written
// before it is read (im2col / direct_rows fill A's rows, im2col_planes fills the plane rows of the
// image it reads before reading them, the first step into a column of Z or Y does not
// accumulate), so what a previous call left there is never used.
struct Scratch {
  std::vector<float> a, z, y, planes;
  std::vector<const float*> a_rows, b_rows;
  std::vector<PanelJob> jobs;
};

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

template <class T>
T* at_least(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

at::Tensor region_conv(const at::Tensor& x_in, const at::Tensor& geometry, const at::Tensor& regions,
                       const at::Tensor& gather, const at::Tensor& groups, const at::Tensor& steps,
                       const at::Tensor& weights, const at::Tensor& order, const at::Tensor& bias,
                       const at::Tensor& const_channels, const at::Tensor& const_values,
                       int64_t tile_rows, int64_t panel_rows, int64_t macs_per_image,
                       int64_t out_channels, int64_t out_h, int64_t out_w) {
  TORCH_CHECK(x_in.device().is_cpu() && x_in.scalar_type() == at::kFloat && x_in.dim() == 4,
              "region_conv: x must be a float32 CPU tensor (N, C, H, W)");
  TORCH_CHECK(geometry.numel() == 12 && regions.dim() == 2 && regions.size(1) == 16 &&
                  steps.size(-1) == 10,
              "region_conv: malformed program");
  for (const at::Tensor* t : {&geometry, &regions, &gather, &groups, &steps, &order, &const_channels})
    TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous(), "region_conv: int64 tables expected");
  for (const at::Tensor* t : {&weights, &bias, &const_values})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), "region_conv: float32 tables expected");
  (void)macs_per_image;  // used by the FLOP formula only

  const auto* gp = geometry.data_ptr<int64_t>();
  const Geometry g{gp[0], gp[1], gp[2], gp[3], gp[4], gp[5], gp[6], gp[7], gp[8], gp[9], gp[10], gp[11]};
  TORCH_CHECK(g.out_c == out_channels && g.ho == out_h && g.wo == out_w, "region_conv: output shape");
  TORCH_CHECK(x_in.size(1) == g.in_c, "region_conv: expected ", g.in_c, " input channels");
  // Channels-last input: each tap of the im2col tile is then one copy of a channel run (an NCHW
  // image for the first layer costs one conversion, far less than strided gathers per tap).
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const Input in{x.data_ptr<float>(), x.stride(0), x.stride(1), x.stride(2), x.stride(3),
                 x.size(2), x.size(3)};
  const int64_t n = x.size(0);
  at::Tensor out = at::empty({n, g.out_c, g.ho, g.wo},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (n == 0) return out;
  float* outp = out.data_ptr<float>();  // (N, Ho, Wo, O) in memory

  const int64_t n_regions = regions.size(0);
  const auto* rp = reinterpret_cast<const Region*>(regions.data_ptr<int64_t>());
  const auto* sp = reinterpret_cast<const Step*>(steps.data_ptr<int64_t>());
  const int64_t* gat = gather.data_ptr<int64_t>();
  const int64_t* grp = groups.data_ptr<int64_t>();
  const float* wts = weights.data_ptr<float>();
  const int64_t* ord = order.data_ptr<int64_t>();
  const float* bia = bias.data_ptr<float>();
  const int64_t* cch = const_channels.data_ptr<int64_t>();
  const float* cval = const_values.data_ptr<float>();

  // Tiles of at most this many rows use the register kernel (AVX-512 only; < 0: every tile).
  const int panel_limit = !have_avx512()      ? 0
                          : panel_rows < 0 ? std::numeric_limits<int>::max()
                                           : static_cast<int>(std::min<int64_t>(panel_rows, 1 << 20));
  // Per group: are its gathered channels consecutive (one memcpy per tap on channels-last input)?
  // Per region: is Y already in channel order (the write-out is then a plain add)?
  std::vector<char> contiguous(groups.size(0), 0), identity(n_regions, 0), direct(n_regions, 0);
  // With AVX-512 (and panel_rows != 0: 0 asks for the portable code only), per region and output
  // channel: the Y column it reads (-1: none) and what is added.
  const bool vector_out = have_avx512() && panel_rows != 0;
  // Element offsets of every gathered channel for the vector gather (same condition; offsets that
  // do not fit int32 keep the scalar gather).
  std::vector<int32_t> gather32(vector_out ? gather.numel() : 0);
  for (int64_t i = 0; i < static_cast<int64_t>(gather32.size()); ++i) {
    const int64_t off = gat[i] * in.sc;
    if (off > std::numeric_limits<int32_t>::max()) {
      gather32.clear();
      break;
    }
    gather32[i] = static_cast<int32_t>(off);
  }
  std::vector<int32_t> out_src(vector_out ? n_regions * g.out_c : 0, -1);
  std::vector<float> out_add(vector_out ? n_regions * g.out_c : 0, 0.f);
  int64_t max_d = 0, max_z = 0, max_y = 0, total_rows = 0, max_plane = 0;
  std::vector<char> planed(n_regions, 0);
  for (int64_t r = 0; r < n_regions; ++r) {
    const Region& reg = rp[r];
    const int64_t* rg = gat + reg.gather_off;  // group bounds index the region's own gather
    for (int64_t i = reg.group_off; i < reg.group_off + reg.n_groups; ++i) {
      const int64_t gs = grp[2 * i], ge = grp[2 * i + 1];
      bool c = ge > gs;
      for (int64_t j = gs + 1; j < ge && c; ++j) c = rg[j] == rg[j - 1] + 1;
      contiguous[i] = c;
    }
    // Direct (copy-free) im2col: one group of every input channel in order, every A step on whole
    // tap rows (the register kernel only).
    if (panel_limit > 0 && reg.n_groups == 1 && contiguous[reg.group_off] && in.sc == 1 && g.dw == 1 &&
        grp[2 * reg.group_off + 1] - grp[2 * reg.group_off] == in.sw) {
      const int64_t run = g.kw * in.sw;
      bool ok = true;
      for (int64_t j = reg.step_off; j < reg.step_off + reg.n_steps; ++j)
        if (sp[j].src == kA) ok = ok && sp[j].s0 % run == 0 && sp[j].s1 % run == 0;
      direct[r] = ok;
    }
    bool id = reg.ny == g.out_c;
    for (int64_t j = 0; j < reg.ny && id; ++j) id = ord[reg.out_off + j] == j;
    identity[r] = id;
    if (vector_out) {  // the region's output map for write_row_avx512
      int32_t* src = out_src.data() + r * g.out_c;
      float* add = out_add.data() + r * g.out_c;
      for (int64_t j = 0; j < reg.ny; ++j) {
        src[ord[reg.out_off + j]] = static_cast<int32_t>(j);
        add[ord[reg.out_off + j]] = bia[reg.out_off + j];
      }
      for (int64_t j = 0; j < reg.n_const; ++j) {
        src[cch[reg.const_off + j]] = -1;
        add[cch[reg.const_off + j]] = cval[reg.const_off + j];
      }
    }
    // Scattered groups (AVX-512 code only; the portable one keeps im2col): im2col through planes.
    bool scattered = false;
    for (int64_t i = reg.group_off; i < reg.group_off + reg.n_groups; ++i) scattered = scattered || !contiguous[i];
    planed[r] = vector_out && !direct[r] && scattered && reg.n_steps > 0;
    if (planed[r]) max_plane = std::max(max_plane, plane_h(g, reg) * plane_w(g, reg) * reg.gather_len);
    max_d = std::max(max_d, reg.gather_len * g.kh * g.kw);
    max_z = std::max(max_z, reg.nz);
    max_y = std::max(max_y, reg.ny);
    total_rows += n * (reg.h1 - reg.h0) * (reg.w1 - reg.w0);
  }
  const int threads_wanted = at::in_parallel_region() ? 1 : std::max(1, at::get_num_threads());
  int64_t tile = tile_rows;
  if (tile <= 0) {
    // Enough items for every thread (four each), but never tiles so small that BLAS starves, nor
    // so tall that the weights are re-read less often than the tile leaves cache (128 rows
    // measured best on AlexNet's layers at batch 32, 1 thread).
    const int64_t cap = 128;
    tile = (total_rows + 4 * threads_wanted - 1) / (4 * threads_wanted);
    tile = std::min<int64_t>(cap, std::max<int64_t>(16, (tile + 7) / 8 * 8));
  }

  struct Item {
    int64_t region, row0, rows, cost;
  };
  std::vector<Item> items;
  for (int64_t r = 0; r < n_regions; ++r) {
    const Region& reg = rp[r];
    const int64_t rows = n * (reg.h1 - reg.h0) * (reg.w1 - reg.w0);
    for (int64_t row0 = 0; row0 < rows; row0 += tile) {
      const int64_t len = std::min(tile, rows - row0);
      items.push_back({r, row0, len, len * (reg.macs_per_position + reg.gather_len * g.kh * g.kw + g.out_c)});
    }
  }
  // Largest first: the dynamic schedule then balances the tail.
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.cost > b.cost; });
  const int n_threads = static_cast<int>(std::min<int64_t>(threads_wanted, items.size()));

  const std::vector<float> zeros(g.kw * in.sw, 0.f);  // a tap row above or below the map

#pragma omp parallel num_threads(n_threads)
  {
    const int saved = MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0;
    Scratch& sc = scratch();
    float* const a = at_least(sc.a, tile * std::max<int64_t>(max_d, 1));
    float* const z = at_least(sc.z, tile * std::max<int64_t>(max_z, 1));
    float* const y = at_least(sc.y, tile * std::max<int64_t>(max_y, 1));
    float* const planes = at_least(sc.planes, std::max<int64_t>(max_plane, 1));
    // Row pointers for panel_gemm: g.kh per row from direct_rows, or k / seg (<= g.kh) per row of a buffer.
    const float** const a_rows = at_least(sc.a_rows, tile * std::max<int64_t>(g.kh, 1));
    const float** const b_rows = at_least(sc.b_rows, tile * std::max<int64_t>(g.kh, 1));
    std::vector<PanelJob>& jobs = sc.jobs;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < static_cast<int64_t>(items.size()); ++i) {
      const Item& it = items[i];
      const Region& reg = rp[it.region];
      const int rows = static_cast<int>(it.rows);
      const int64_t d = reg.gather_len * g.kh * g.kw;
      const bool in_place = direct[it.region];
      if (reg.n_steps > 0 && in_place)
        direct_rows(in, g, reg, gat[reg.gather_off + grp[2 * reg.group_off]], it.row0, rows, a, d,
                    zeros.data(), a_rows);
      else if (planed[it.region])
        im2col_planes(in, g, reg, gat + reg.gather_off, gather32.empty() ? nullptr : gather32.data() + reg.gather_off,
                      grp + 2 * reg.group_off, contiguous.data() + reg.group_off, it.row0, rows, a, d, planes);
      else if (reg.n_steps > 0)
        im2col(in, g, reg, gat + reg.gather_off, gather32.empty() ? nullptr : gather32.data() + reg.gather_off,
               grp + 2 * reg.group_off, contiguous.data() + reg.group_off, it.row0, rows, a, d);
      for (int64_t s = 0; s < reg.n_steps;) {
        const Step* st = sp + reg.step_off + s;
        // Consecutive steps that read the same columns of A run as one pass over them.
        int64_t e = s + 1;
        while (st->src == kA && e < reg.n_steps && st[e - s].src == kA && st[e - s].s0 == st->s0 &&
               st[e - s].s1 == st->s1)
          ++e;
        const int k = static_cast<int>(st->s1 - st->s0);
        const int lds = static_cast<int>(st->src == kA ? d : reg.nz);
        const float* src = (st->src == kA ? a : z) + st->s0;
        if (k > 0 && (rows <= panel_limit || (st->src == kA && in_place))) {
          jobs.clear();
          for (const Step* q = st; q < st + (e - s); ++q)
            add_jobs(jobs, wts + q->weight_off, static_cast<int>(q->d1 - q->d0), k,
                     (q->dst == kZ ? z : y) + q->d0, static_cast<int>(q->dst == kZ ? reg.nz : reg.ny),
                     q->accumulate != 0, static_cast<int>(q->split));
          if (st->src == kA && in_place) {
            const int run = static_cast<int>(g.kw * in.sw);
            panel_gemm(rows, k / run, run, a_rows + st->s0 / run, static_cast<int>(g.kh), jobs.data(),
                       static_cast<int>(jobs.size()));
          } else {  // runs of seg columns per row (what split panels are laid out for; others do not mind)
            const int seg = static_cast<int>(st->seg), nseg = k / seg;
            for (int r = 0; r < rows; ++r)
              for (int q = 0; q < nseg; ++q) b_rows[r * nseg + q] = src + static_cast<int64_t>(r) * lds + q * seg;
            panel_gemm(rows, nseg, seg, b_rows, nseg, jobs.data(), static_cast<int>(jobs.size()));
          }
        } else {
          for (const Step* q = st; q < st + (e - s); ++q)
            blas_rows(rows, static_cast<int>(q->d1 - q->d0), k, wts + q->weight_off, src, lds, q->accumulate != 0,
                      (q->dst == kZ ? z : y) + q->d0, static_cast<int>(q->dst == kZ ? reg.nz : reg.ny),
                      static_cast<int>(q->split), static_cast<int>(q->seg));
        }
        s = e;
      }
      // Write-out: bias, channel scatter, constants, into the channels-last output.
      const int64_t* o_ord = ord + reg.out_off;
      const float* o_bias = bia + reg.out_off;
      const int64_t* c_ch = cch + reg.const_off;
      const float* c_val = cval + reg.const_off;
      Cursor pos(reg, it.row0);
      for (int t = 0; t < rows; ++t, pos.next()) {
        float* o = outp + ((pos.n * g.ho + pos.oy) * g.wo + pos.ox) * g.out_c;
        const float* yr = y + static_cast<int64_t>(t) * reg.ny;
        if (vector_out) {
          const int32_t* o_src = out_src.data() + it.region * g.out_c;
          const float* o_add = out_add.data() + it.region * g.out_c;
          if (reg.ny <= 64)
            write_row_permute(o, yr, o_src, o_add, g.out_c, reg.ny);
          else
            write_row_avx512(o, yr, o_src, o_add, g.out_c);
          continue;
        }
        if (identity[it.region]) {
          for (int64_t j = 0; j < reg.ny; ++j) o[j] = yr[j] + o_bias[j];
        } else {
          for (int64_t j = 0; j < reg.ny; ++j) o[o_ord[j]] = yr[j] + o_bias[j];
        }
        for (int64_t j = 0; j < reg.n_const; ++j) o[c_ch[j]] = c_val[j];
      }
    }
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(saved);
  }
  return out;
}

// What a layer's cached program was lowered from: the layer's tensors, with the version counter
// and data pointer each had then. current() says whether they still hold (no tensor changed in
// place, none had its storage swapped). In Python the same check walked 128 tensor objects one
// dependent load after another; after a classifier has evicted them that was 0.5 ms of G4 K4's
// batch-1 forward. Here the loads of different tensors overlap.
struct TensorsState : torch::CustomClassHolder {
  std::vector<at::Tensor> tensors;
  std::vector<int64_t> versions;
  std::vector<const void*> ptrs;

  explicit TensorsState(std::vector<at::Tensor> ts) : tensors(std::move(ts)) {
    for (const at::Tensor& t : tensors) {
      versions.push_back(static_cast<int64_t>(t._version()));
      ptrs.push_back(t.data_ptr());
    }
  }

  bool current() const {
    bool ok = true;  // no early exit: a changed layer is rare, and the loads then stay independent
    for (size_t i = 0; i < tensors.size(); ++i)
      ok &= static_cast<int64_t>(tensors[i]._version()) == versions[i] && tensors[i].data_ptr() == ptrs[i];
    return ok;
  }
};

}  // namespace

TORCH_LIBRARY(hscc_native, m) {
  m.class_<TensorsState>("TensorsState")
      .def(torch::init<std::vector<at::Tensor>>())
      .def("current", &TensorsState::current);
  m.def(
      "region_conv(Tensor x, Tensor geometry, Tensor regions, Tensor gather, Tensor groups, "
      "Tensor steps, Tensor weights, Tensor order, Tensor bias, Tensor const_channels, "
      "Tensor const_values, int tile_rows, int panel_rows, int macs_per_image, int out_channels, int out_h, "
      "int out_w) -> Tensor");
}

TORCH_LIBRARY_IMPL(hscc_native, CPU, m) { m.impl("region_conv", &region_conv); }
