// Turning a runtime dtype code into a template parameter, once, for both the CPU and the CUDA host code.
#pragma once

#include <stdexcept>
#include <string>

#include "row_math.h"

namespace rlaifv {

template <class F>
void dispatch_float(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat64: f(double{}); break;
    case DType::kBFloat16: f(bf16_t{}); break;
    case DType::kFloat16: f(fp16_t{}); break;
    default: throw std::invalid_argument("unsupported logits dtype code " + std::to_string(static_cast<int>(dtype)));
  }
}

}  // namespace rlaifv
