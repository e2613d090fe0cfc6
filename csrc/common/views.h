// Plain descriptions of the tensors a kernel reads and writes. Python passes data pointers, shapes, strides (in
// elements) and dtype codes; no libtorch is involved, so one build serves any torch version.
#pragma once

#include <cstdint>

#include "row_math.h"

namespace rlaifv {

// A (B, T, V) tensor addressed by rows: row (b, t) starts at data + b*sb + t*st, its V entries have unit stride.
struct RowsView {
  const void* data;
  DType dtype;
  int64_t B, T, V;
  int64_t sb, st;
};

// The same for an output, written by rows.
struct MutRowsView {
  void* data;
  DType dtype;
  int64_t sb, st;
};

// A (B, T) integer tensor (labels) with arbitrary strides.
struct IndexView {
  const void* data;
  IndexDType dtype;
  int64_t sb, st;
};

// First invalid flat position (b * T + t) found by a kernel, or kNoError.
constexpr int64_t kNoError = INT64_MAX;

template <class T>
RF_HD const T* row_ptr(const RowsView& v, int64_t b, int64_t t) {
  return static_cast<const T*>(v.data) + b * v.sb + t * v.st;
}

template <class T>
RF_HD T* row_ptr(const MutRowsView& v, int64_t b, int64_t t) {
  return static_cast<T*>(v.data) + b * v.sb + t * v.st;
}

RF_HD int64_t label_at(const IndexView& y, int64_t b, int64_t t) {
  return load_index_any(y.data, y.dtype, b * y.sb + t * y.st);
}

// The prologue every per-token kernel shares (CPU loops and CUDA blocks alike): flat row r of the (B, T) grid, its
// (b, t), its label and whether that label is valid, masked or invalid.
struct TokenRow {
  int64_t r, b, t, label;
  LabelKind kind;
};

RF_HD TokenRow token_row(const RowsView& x, const IndexView& y, int64_t r, int64_t ignore_index) {
  TokenRow row;
  row.r = r;
  row.b = r / x.T;
  row.t = r - row.b * x.T;
  row.label = label_at(y, row.b, row.t);
  row.kind = classify_label(row.label, ignore_index, x.V);
  return row;
}

}  // namespace rlaifv
