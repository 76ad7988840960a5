// Batch normalisation with batch statistics (training) for float32 on CPUs: forward and
// backward, each in the fewest passes over memory.
//
// Built and loaded by tf_simclr/models/native_batch_norm.py (g++, the flags of
// tf.sysconfig, -O3 -march=native): the loops below are plain C++ that the compiler
// vectorises over the channels for the CPU it runs on. x is [rows, C] (any rank, channels
// last); N = rows.
//
// Forward (NativeBatchNormForward): one pass for the per-channel sums of x - s and
// (x - s)^2, s = the first row (float partial sums of at most 64 rows, accumulated in
// double), then one pass for
//   y = (x - mean) * a + offset,   a = scale / sqrt(var + eps),
// with mean = s + sum / N and the biased var = sumsq / N - (sum / N)^2 (in double).
//
// Backward (NativeBatchNormBackward), with x_hat = (x - mean) * inv, inv = 1/sqrt(var+eps):
//   doffset = sum(dy),  dscale = inv * sum(dy * (x - mean)),
//   dx = scale * inv * (dy - doffset / N - x_hat * dscale / N)
//      = k1 * dy + k2 * (x - mean) + k3  per channel:
//   k1 = scale * inv,  k2 = -scale * inv^2 * dscale / N,  k3 = -k1 * doffset / N.
// One pass for the two sums, one pass for dx.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace tf_simclr {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShapeUtils;

REGISTER_OP("NativeBatchNormForward")
    .Input("x: float")
    .Input("scale: float")
    .Input("offset: float")
    .Output("y: float")
    .Output("mean: float")
    .Output("variance: float")
    .Attr("epsilon: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->input(1));
      c->set_output(2, c->input(1));
      return ::absl::OkStatus();
    });

REGISTER_OP("NativeBatchNormBackward")
    .Input("dy: float")
    .Input("x: float")
    .Input("scale: float")
    .Input("mean: float")
    .Input("variance: float")
    .Output("dx: float")
    .Output("dscale: float")
    .Output("doffset: float")
    .Attr("epsilon: float")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      c->set_output(2, c->input(2));
      return ::absl::OkStatus();
    });

namespace {

constexpr int64_t kFlushRows = 64;  // Rows summed in float before adding to double.

// Per-channel sums over rows of f(row_a, row_b, c) pairs, split in row blocks over the
// CPU worker threads. `pair(a_row, b_row, first, second)` adds each channel's two terms.
template <typename Pair>
void ChannelSums(OpKernelContext* ctx, int64_t rows, int64_t channels, const Pair& pair,
                 std::vector<double>* first_sum, std::vector<double>* second_sum) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>(workers->num_threads * 4, (rows + kFlushRows - 1) / kFlushRows));
  const int64_t rows_per_block = (rows + blocks - 1) / blocks;
  std::vector<double> partial(blocks * channels * 2, 0.0);
  ::tensorflow::Shard(
      workers->num_threads, workers->workers, blocks, rows_per_block * channels * 4,
      [&](int64_t begin, int64_t end) {
        std::vector<float> first(channels), second(channels);
        for (int64_t block = begin; block < end; ++block) {
          double* total_first = &partial[block * channels * 2];
          double* total_second = total_first + channels;
          const int64_t row_end = std::min(rows, (block + 1) * rows_per_block);
          for (int64_t row = block * rows_per_block; row < row_end;) {
            std::fill(first.begin(), first.end(), 0.f);
            std::fill(second.begin(), second.end(), 0.f);
            const int64_t chunk_end = std::min(row_end, row + kFlushRows);
            for (; row < chunk_end; ++row) pair(row, first.data(), second.data());
            for (int64_t c = 0; c < channels; ++c) {
              total_first[c] += first[c];
              total_second[c] += second[c];
            }
          }
        }
      });
  first_sum->assign(channels, 0.0);
  second_sum->assign(channels, 0.0);
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t c = 0; c < channels; ++c) {
      (*first_sum)[c] += partial[block * channels * 2 + c];
      (*second_sum)[c] += partial[block * channels * 2 + channels + c];
    }
  }
}

// out[row, c] = k1[c] * a[row, c] + k2[c] * (b[row, c] - center[c]) + k3[c]
// (b null: out = k1[c] * (a[row, c] - center[c]) + k3[c]). Centering before scaling keeps
// float32 rounding small when a channel's mean is large against its spread.
void RowAffine(OpKernelContext* ctx, int64_t rows, int64_t channels,
               const float* __restrict a, const float* __restrict b,
               const float* __restrict center, const float* __restrict k1,
               const float* __restrict k2, const float* __restrict k3,
               float* __restrict out) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(
      workers->num_threads, workers->workers, rows, channels * (b ? 6 : 4),
      [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const float* __restrict a_row = a + row * channels;
          float* __restrict out_row = out + row * channels;
          if (b) {
            const float* __restrict b_row = b + row * channels;
            for (int64_t c = 0; c < channels; ++c)
              out_row[c] = k1[c] * a_row[c] + k2[c] * (b_row[c] - center[c]) + k3[c];
          } else {
            for (int64_t c = 0; c < channels; ++c)
              out_row[c] = k1[c] * (a_row[c] - center[c]) + k3[c];
          }
        }
      });
}

// False (and the op failed) unless x has a channel axis and inputs
// first_vector..first_vector+num_vectors-1 are [channels] vectors.
bool CheckInputs(OpKernelContext* ctx, const Tensor& x, int first_vector, int num_vectors) {
  if (x.dims() < 1) {
    ctx->CtxFailure(::absl::InvalidArgumentError("x must have a channel axis"));
    return false;
  }
  const int64_t channels = x.dim_size(x.dims() - 1);
  for (int i = first_vector; i < first_vector + num_vectors; ++i) {
    const Tensor& vector = ctx->input(i);
    if (!TensorShapeUtils::IsVector(vector.shape()) || vector.dim_size(0) != channels) {
      ctx->CtxFailure(::absl::InvalidArgumentError(
          "per-channel inputs must be [channels], channels = x's last axis"));
      return false;
    }
  }
  return true;
}

class NativeBatchNormForwardOp : public OpKernel {
 public:
  explicit NativeBatchNormForwardOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    if (!CheckInputs(ctx, x, 1, 2)) return;
    const int64_t channels = x.dim_size(x.dims() - 1);
    const int64_t rows = channels ? x.NumElements() / channels : 0;
    Tensor* y = nullptr;
    Tensor* mean = nullptr;
    Tensor* variance = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ctx->input(1).shape(), &mean));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, ctx->input(1).shape(), &variance));
    const float* in = x.flat<float>().data();
    // Sums of x - shift with shift = the first row (about the mean): the variance as
    // E[(x - shift)^2] - E[x - shift]^2 then loses no digits to a large mean.
    std::vector<float> shift(in, in + (rows ? channels : 0));
    shift.resize(channels, 0.f);
    const float* shift_data = shift.data();
    std::vector<double> sum, squared_sum;
    ChannelSums(ctx, rows, channels,
                [in, shift_data, channels](int64_t row, float* first, float* second) {
                  const float* values = in + row * channels;
                  for (int64_t c = 0; c < channels; ++c) {
                    const float centered = values[c] - shift_data[c];
                    first[c] += centered;
                    second[c] += centered * centered;
                  }
                },
                &sum, &squared_sum);
    const float* scale = ctx->input(1).flat<float>().data();
    const float* offset = ctx->input(2).flat<float>().data();
    std::vector<float> a(channels);
    float* mean_out = mean->flat<float>().data();
    float* variance_out = variance->flat<float>().data();
    for (int64_t c = 0; c < channels; ++c) {
      const double shifted_mean = rows ? sum[c] / rows : 0.0;
      const double m = shift[c] + shifted_mean;
      const double v =
          rows ? std::max(0.0, squared_sum[c] / rows - shifted_mean * shifted_mean) : 0.0;
      const double inv = 1.0 / std::sqrt(v + epsilon_);
      mean_out[c] = static_cast<float>(m);
      variance_out[c] = static_cast<float>(v);
      a[c] = static_cast<float>(scale[c] * inv);
    }
    RowAffine(ctx, rows, channels, in, nullptr, mean_out, a.data(), nullptr, offset,
              y->flat<float>().data());
  }

 private:
  float epsilon_;
};

class NativeBatchNormBackwardOp : public OpKernel {
 public:
  explicit NativeBatchNormBackwardOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    OP_REQUIRES(ctx, dy.shape() == x.shape(),
                ::absl::InvalidArgumentError("dy and x must have the same shape"));
    if (!CheckInputs(ctx, x, 2, 3)) return;
    const int64_t channels = x.dim_size(x.dims() - 1);
    const int64_t rows = channels ? x.NumElements() / channels : 0;
    Tensor* dx = nullptr;
    Tensor* dscale = nullptr;
    Tensor* doffset = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, ctx->input(2).shape(), &dscale));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, ctx->input(2).shape(), &doffset));
    const float* gradient = dy.flat<float>().data();
    const float* in = x.flat<float>().data();
    const float* mean = ctx->input(3).flat<float>().data();
    std::vector<double> dy_sum, dy_centered_sum;
    ChannelSums(ctx, rows, channels,
                [gradient, in, mean, channels](int64_t row, float* first, float* second) {
                  const float* g = gradient + row * channels;
                  const float* values = in + row * channels;
                  for (int64_t c = 0; c < channels; ++c) {
                    first[c] += g[c];
                    second[c] += g[c] * (values[c] - mean[c]);
                  }
                },
                &dy_sum, &dy_centered_sum);
    const float* scale = ctx->input(2).flat<float>().data();
    const float* variance = ctx->input(4).flat<float>().data();
    std::vector<float> k1(channels), k2(channels), k3(channels);
    float* dscale_out = dscale->flat<float>().data();
    float* doffset_out = doffset->flat<float>().data();
    for (int64_t c = 0; c < channels; ++c) {
      const double inv = 1.0 / std::sqrt(static_cast<double>(variance[c]) + epsilon_);
      const double dscale_c = dy_centered_sum[c] * inv;
      dscale_out[c] = static_cast<float>(dscale_c);
      doffset_out[c] = static_cast<float>(dy_sum[c]);
      const double first = scale[c] * inv;
      const double second = rows ? -scale[c] * inv * inv * dscale_c / rows : 0.0;
      k1[c] = static_cast<float>(first);
      k2[c] = static_cast<float>(second);
      k3[c] = static_cast<float>(rows ? -first * dy_sum[c] / rows : 0.0);
    }
    RowAffine(ctx, rows, channels, gradient, in, mean, k1.data(), k2.data(), k3.data(),
              dx->flat<float>().data());
  }

 private:
  float epsilon_;
};

REGISTER_KERNEL_BUILDER(Name("NativeBatchNormForward").Device(DEVICE_CPU),
                        NativeBatchNormForwardOp);
REGISTER_KERNEL_BUILDER(Name("NativeBatchNormBackward").Device(DEVICE_CPU),
                        NativeBatchNormBackwardOp);

}  // namespace
}  // namespace tf_simclr
