/* CPU kernels for the two training hot spots oneDNN and ATen leave slow (see pipeline/kernels/__init__.py).
 *
 * Every array is float32, C-contiguous in the layout given; "channels-last" means [B, H, W, C].
 * Each exported function splits the batch into `parts` contiguous slices, one OpenMP thread each
 * (built with -fopenmp, the library shares PyTorch's own OpenMP runtime and its threads): outputs
 * indexed by image are written by the slice that owns the image, and the outputs shared by every
 * image (weight and feature gradients) go to one buffer per slice, summed by the caller.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 16 /* channels per register block: one AVX-512 register, two AVX2 ones */

/* Weight gradient of a depthwise convolution (stride 1), added to out (double, [KH, KW, C]):
 * out[i, j, c] += sum over b, ho, wo of x[b, ho + i*dil_h - pad_h, wo + j*dil_w - pad_w, c] * g[b, ho, wo, c]
 * x: [B, H, W, C]; g: [B, Ho, Wo, C]; scratch: KH*KW*C floats (one image's sums, kept in float). */
__attribute__((noinline)) static void depthwise_weight_grad_range(const float *restrict x, const float *restrict g, double *restrict out,
                           float *restrict scratch, int64_t b0, int64_t b1, int64_t H, int64_t W,
                           int64_t C, int64_t Ho, int64_t Wo, int64_t KH, int64_t KW, int64_t pad_h,
                           int64_t pad_w, int64_t dil_h, int64_t dil_w) {
    const int64_t K = KH * KW * C;
    const int64_t full = C - C % BLOCK;
    for (int64_t b = b0; b < b1; ++b) {
        memset(scratch, 0, (size_t)K * sizeof(float));
        for (int64_t ho = 0; ho < Ho; ++ho) {
            const float *gr = g + ((b * Ho + ho) * Wo) * C;
            for (int64_t i = 0; i < KH; ++i) {
                const int64_t hi = ho + i * dil_h - pad_h;
                if (hi < 0 || hi >= H) continue;
                const float *xr = x + ((b * H + hi) * W) * C;
                for (int64_t j = 0; j < KW; ++j) {
                    const int64_t off = j * dil_w - pad_w;
                    const int64_t lo = off < 0 ? -off : 0;
                    const int64_t hi_w = (W - off) < Wo ? (W - off) : Wo;
                    float *acc = scratch + (i * KW + j) * C;
                    for (int64_t c0 = 0; c0 < full; c0 += BLOCK) {
                        float a[BLOCK];
                        for (int k = 0; k < BLOCK; ++k) a[k] = acc[c0 + k];
                        for (int64_t wo = lo; wo < hi_w; ++wo) {
                            const float *xp = xr + (wo + off) * C + c0;
                            const float *gp = gr + wo * C + c0;
                            for (int k = 0; k < BLOCK; ++k) a[k] += xp[k] * gp[k];
                        }
                        for (int k = 0; k < BLOCK; ++k) acc[c0 + k] = a[k];
                    }
                    for (int64_t wo = lo; wo < hi_w; ++wo) {
                        const float *xp = xr + (wo + off) * C;
                        const float *gp = gr + wo * C;
                        for (int64_t c = full; c < C; ++c) acc[c] += xp[c] * gp[c];
                    }
                }
            }
        }
        for (int64_t k = 0; k < K; ++k) out[k] += (double)scratch[k];
    }
}

/* The four bilinear corners of a grid position (align_corners=True, zero padding): flat pixel
 * indices (-1 where outside the image) and weights, and the fractional offsets tx, ty.
 * Returns 0 when no corner can be inside (also for NaN positions), else 1. */
static inline int corners(float gx, float gy, int64_t H, int64_t W, int64_t idx[4], float w[4],
                          float *tx_out, float *ty_out) {
    const float ix = (gx + 1.0f) * 0.5f * (float)(W - 1);
    const float iy = (gy + 1.0f) * 0.5f * (float)(H - 1);
    if (!(ix >= -1.0f && ix <= (float)W && iy >= -1.0f && iy <= (float)H)) return 0;
    const float fx = floorf(ix), fy = floorf(iy);
    const int64_t x0 = (int64_t)fx, y0 = (int64_t)fy;
    const float tx = ix - fx, ty = iy - fy;
    const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
    const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
    w[0] = (1.0f - tx) * (1.0f - ty);
    w[1] = tx * (1.0f - ty);
    w[2] = (1.0f - tx) * ty;
    w[3] = tx * ty;
    for (int k = 0; k < 4; ++k)
        idx[k] = (xs[k] >= 0 && xs[k] < W && ys[k] >= 0 && ys[k] < H) ? ys[k] * W + xs[k] : -1;
    *tx_out = tx;
    *ty_out = ty;
    return 1;
}

/* BLOCK partial sums, so that the compiler vectorises the dot product without reassociating floats */
static inline float dot(const float *restrict a, const float *restrict b, int64_t C) {
    float part[BLOCK] = {0.0f};
    const int64_t full = C - C % BLOCK;
    for (int64_t c0 = 0; c0 < full; c0 += BLOCK)
        for (int k = 0; k < BLOCK; ++k) part[k] += a[c0 + k] * b[c0 + k];
    float s = 0.0f;
    for (int64_t c = full; c < C; ++c) s += a[c] * b[c];
    for (int k = 0; k < BLOCK; ++k) s += part[k];
    return s;
}

/* y[b, n] = sum_c feat[n, c] * bilinear(x[b, :, :, c], grid[b, n]) for the images [b0, b1).
 * x: [B, H, W, C]; grid: [B, N, 2] (x along the width, y along the height, in [-1, 1]); feat: [N, C]. */
__attribute__((noinline)) static void readout_forward_range(const float *restrict x, const float *restrict grid, const float *restrict feat,
                     float *restrict y, int64_t b0, int64_t b1, int64_t H, int64_t W, int64_t C,
                     int64_t N) {
    for (int64_t b = b0; b < b1; ++b) {
        const float *xb = x + b * H * W * C;
        for (int64_t n = 0; n < N; ++n) {
            int64_t idx[4];
            float w[4], tx, ty, s = 0.0f;
            const float *p = grid + (b * N + n) * 2;
            if (corners(p[0], p[1], H, W, idx, w, &tx, &ty))
                for (int k = 0; k < 4; ++k)
                    if (idx[k] >= 0) s += w[k] * dot(xb + idx[k] * C, feat + n * C, C);
            y[b * N + n] = s;
        }
    }
}

/* Gradients of readout_forward for the images [b0, b1), given gy = dL/dy [B, N]:
 * gx (dL/dx, [B, H, W, C], zero on entry, or NULL), ggrid ([B, N, 2], or NULL) and gfeat (this
 * thread's [N, C] buffer, zero on entry, or NULL). */
__attribute__((noinline)) static void readout_backward_range(const float *restrict x, const float *restrict grid, const float *restrict feat,
                      const float *restrict gy, float *restrict gx, float *restrict ggrid,
                      float *restrict gfeat, int64_t b0, int64_t b1, int64_t H, int64_t W, int64_t C,
                      int64_t N) {
    const float sx = 0.5f * (float)(W - 1), sy = 0.5f * (float)(H - 1);
    for (int64_t b = b0; b < b1; ++b) {
        const float *xb = x + b * H * W * C;
        float *gxb = gx ? gx + b * H * W * C : NULL;
        for (int64_t n = 0; n < N; ++n) {
            int64_t idx[4];
            float w[4], tx, ty;
            const float *p = grid + (b * N + n) * 2;
            const float go = gy[b * N + n];
            float *gp = ggrid ? ggrid + (b * N + n) * 2 : NULL;
            if (gp) gp[0] = gp[1] = 0.0f;
            if (go == 0.0f || !corners(p[0], p[1], H, W, idx, w, &tx, &ty)) continue;
            const float *fn = feat + n * C;
            if (gp) {
                float v[4];
                for (int k = 0; k < 4; ++k) v[k] = idx[k] >= 0 ? dot(xb + idx[k] * C, fn, C) : 0.0f;
                gp[0] = go * sx * ((1.0f - ty) * (v[1] - v[0]) + ty * (v[3] - v[2]));
                gp[1] = go * sy * ((1.0f - tx) * (v[2] - v[0]) + tx * (v[3] - v[1]));
            }
            for (int k = 0; k < 4; ++k) {
                if (idx[k] < 0) continue;
                const float a = go * w[k];
                if (gfeat) {
                    const float *xp = xb + idx[k] * C;
                    float *gf = gfeat + n * C;
                    for (int64_t c = 0; c < C; ++c) gf[c] += a * xp[c];
                }
                if (gxb) {
                    float *gxp = gxb + idx[k] * C;
                    for (int64_t c = 0; c < C; ++c) gxp[c] += a * fn[c];
                }
            }
        }
    }
}

#define SLICE(part) \
    const int64_t b0 = B * (part) / parts, b1 = B * ((part) + 1) / parts

/* out: parts x [KH*KW*C] doubles (zero on entry); scratch: parts x [KH*KW*C] floats. */
void depthwise_weight_grad(const float *x, const float *g, double *out, float *scratch, int64_t B,
                           int64_t parts, int64_t H, int64_t W, int64_t C, int64_t Ho, int64_t Wo,
                           int64_t KH, int64_t KW, int64_t pad_h, int64_t pad_w, int64_t dil_h,
                           int64_t dil_w) {
    const int64_t K = KH * KW * C;
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; ++part) {
        SLICE(part);
        depthwise_weight_grad_range(x, g, out + part * K, scratch + part * K, b0, b1, H, W, C, Ho, Wo,
                                    KH, KW, pad_h, pad_w, dil_h, dil_w);
    }
}

void readout_forward(const float *x, const float *grid, const float *feat, float *y, int64_t B,
                     int64_t parts, int64_t H, int64_t W, int64_t C, int64_t N) {
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; ++part) {
        SLICE(part);
        readout_forward_range(x, grid, feat, y, b0, b1, H, W, C, N);
    }
}

/* gfeat: parts x [N, C] floats (zero on entry) or NULL. */
void readout_backward(const float *x, const float *grid, const float *feat, const float *gy, float *gx,
                      float *ggrid, float *gfeat, int64_t B, int64_t parts, int64_t H, int64_t W,
                      int64_t C, int64_t N) {
#pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int64_t part = 0; part < parts; ++part) {
        SLICE(part);
        readout_backward_range(x, grid, feat, gy, gx, ggrid, gfeat ? gfeat + part * N * C : NULL, b0, b1,
                               H, W, C, N);
    }
}
