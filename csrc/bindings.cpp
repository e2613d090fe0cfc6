// The Python binding: a thin layer that turns integers (pointers, shapes, strides, dtype codes, the CUDA stream)
// into views and calls the kernels. Validation lives in Python (rlaifv_fast/ops/_checks.py); the kernels report
// invalid indices back as a position.
#include <pybind11/pybind11.h>

#include <string>

#include "build_config.h"
#include "kernels.h"

namespace py = pybind11;
using namespace rlaifv;

namespace {

template <class P>
P* as_ptr(uintptr_t p) {
  return reinterpret_cast<P*>(p);
}

RowsView make_rows(uintptr_t data, int dtype, int64_t B, int64_t T, int64_t V, int64_t sb, int64_t st) {
  return RowsView{as_ptr<const void>(data), static_cast<DType>(dtype), B, T, V, sb, st};
}

MutRowsView make_mut_rows(uintptr_t data, int dtype, int64_t sb, int64_t st) {
  return MutRowsView{as_ptr<void>(data), static_cast<DType>(dtype), sb, st};
}

IndexView make_index(uintptr_t data, int dtype, int64_t sb, int64_t st) {
  return IndexView{as_ptr<const void>(data), static_cast<IndexDType>(dtype), sb, st};
}

py::object error_position(int64_t first_bad) {
  if (first_bad == kNoError) return py::none();
  return py::int_(first_bad);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "rlaifv_fast native kernels (CPU always, CUDA when compiled in). Called from rlaifv_fast.ops only.";

  py::class_<RowsView>(m, "RowsView")
      .def(py::init(&make_rows), py::arg("data"), py::arg("dtype"), py::arg("B"), py::arg("T"), py::arg("V"),
           py::arg("sb"), py::arg("st"));
  py::class_<MutRowsView>(m, "MutRowsView")
      .def(py::init(&make_mut_rows), py::arg("data"), py::arg("dtype"), py::arg("sb"), py::arg("st"));
  py::class_<IndexView>(m, "IndexView")
      .def(py::init(&make_index), py::arg("data"), py::arg("dtype"), py::arg("sb"), py::arg("st"));

  m.def(
      "build_info",
      []() {
        py::dict d;
        d["cpu"] = true;
        d["openmp"] = cpu::has_openmp();
        d["cpu_threads"] = cpu::max_threads();
#ifdef RLAIFV_NATIVE_ARCH
        d["cpu_native_arch"] = true;
#else
        d["cpu_native_arch"] = false;
#endif
#ifdef RLAIFV_WITH_CUDA
        d["cuda"] = true;
        d["cuda_archs"] = std::string(RLAIFV_CUDA_ARCHS);
        d["cuda_version"] = std::string(RLAIFV_CUDA_VERSION);
#else
        d["cuda"] = false;
        d["cuda_archs"] = std::string();
        d["cuda_version"] = std::string();
#endif
        d["compiler"] = std::string(RLAIFV_CXX_COMPILER);
        return d;
      },
      "What this build compiled in: CPU (always), OpenMP, CUDA with its architectures.");

  // ---- CPU ----
  m.def(
      "cpu_advise_huge_pages", [](uintptr_t data, int64_t nbytes) { return cpu::advise_huge_pages(as_ptr<void>(data), nbytes); },
      "Hint the kernel to back a fresh, untouched buffer with huge pages (Linux; returns whether it applied).");
  m.def(
      "cpu_token_logps_forward",
      [](const RowsView& x, const IndexView& y, int64_t ignore_index, double inv_temp, uintptr_t out_logp,
         uintptr_t out_lse) {
        int64_t bad;
        {
          py::gil_scoped_release nogil;
          bad = cpu::token_logps_forward(x, y, ignore_index, inv_temp, as_ptr<void>(out_logp), as_ptr<void>(out_lse));
        }
        return error_position(bad);
      });
  m.def(
      "cpu_token_logps_backward",
      [](const RowsView& x, const IndexView& y, int64_t ignore_index, double inv_temp, uintptr_t coef, uintptr_t lse,
         const MutRowsView& dx) {
        cpu::token_logps_backward(x, y, ignore_index, inv_temp, as_ptr<const void>(coef), as_ptr<const void>(lse), dx);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "cpu_rows_lse",
      [](const RowsView& x, double inv_temp, uintptr_t out_lse) { cpu::rows_lse(x, inv_temp, as_ptr<void>(out_lse)); },
      py::call_guard<py::gil_scoped_release>(), "Every row's log-sum-exp of x * inv_temp (no labels).");
  m.def(
      "cpu_rows_grad",
      [](const RowsView& x, const IndexView& y, double inv_temp, uintptr_t coef, uintptr_t lse, const MutRowsView& dx) {
        cpu::rows_grad(x, y, inv_temp, as_ptr<const void>(coef), as_ptr<const void>(lse), dx);
      },
      py::call_guard<py::gil_scoped_release>(),
      "coef * (onehot - softmax(x * inv_temp)) * inv_temp per row; a label outside [0, V) adds no one-hot.");
  m.def(
      "cpu_bon_token_rewards",
      [](const RowsView& policy, const RowsView* ref_logits, uintptr_t ref_logps, const IndexView& y,
         int64_t ignore_index, double inv_temp, uintptr_t out_diff) {
        int64_t bad;
        {
          py::gil_scoped_release nogil;
          bad = cpu::bon_token_rewards(policy, ref_logits, as_ptr<const void>(ref_logps), y, ignore_index, inv_temp,
                                       as_ptr<void>(out_diff));
        }
        return error_position(bad);
      },
      py::arg("policy"), py::arg("ref_logits").none(true), py::arg("ref_logps"), py::arg("labels"),
      py::arg("ignore_index"), py::arg("inv_temp"), py::arg("out_diff"));
  m.def(
      "cpu_yes_no_logprobs",
      [](const RowsView& x, const IndexView* positions, uintptr_t yes_ids, int64_t n_yes, uintptr_t no_ids,
         int64_t n_no, uintptr_t out_yes, uintptr_t out_no) {
        int64_t bad;
        {
          py::gil_scoped_release nogil;
          bad = cpu::yes_no_logprobs(x, positions, TokenSet{as_ptr<const int64_t>(yes_ids), n_yes},
                                     TokenSet{as_ptr<const int64_t>(no_ids), n_no}, as_ptr<void>(out_yes),
                                     as_ptr<void>(out_no));
        }
        return error_position(bad);
      },
      py::arg("logits"), py::arg("positions").none(true), py::arg("yes_ids"), py::arg("n_yes"), py::arg("no_ids"),
      py::arg("n_no"), py::arg("out_yes"), py::arg("out_no"));

#ifdef RLAIFV_WITH_CUDA
  // ---- CUDA: asynchronous on the given stream; invalid positions land in the device int64 at `err` ----
  m.def(
      "cuda_token_logps_forward",
      [](const RowsView& x, const IndexView& y, int64_t ignore_index, double inv_temp, uintptr_t out_logp,
         uintptr_t out_lse, uintptr_t err, uintptr_t stream) {
        cuda::token_logps_forward(x, y, ignore_index, inv_temp, as_ptr<void>(out_logp), as_ptr<void>(out_lse),
                                  as_ptr<int64_t>(err), stream);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "cuda_token_logps_backward",
      [](const RowsView& x, const IndexView& y, int64_t ignore_index, double inv_temp, uintptr_t coef, uintptr_t lse,
         const MutRowsView& dx, uintptr_t stream) {
        cuda::token_logps_backward(x, y, ignore_index, inv_temp, as_ptr<const void>(coef), as_ptr<const void>(lse),
                                   dx, stream);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "cuda_rows_lse",
      [](const RowsView& x, double inv_temp, uintptr_t out_lse, uintptr_t stream) {
        cuda::rows_lse(x, inv_temp, as_ptr<void>(out_lse), stream);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "cuda_rows_grad",
      [](const RowsView& x, const IndexView& y, double inv_temp, uintptr_t coef, uintptr_t lse, const MutRowsView& dx,
         uintptr_t stream) {
        cuda::rows_grad(x, y, inv_temp, as_ptr<const void>(coef), as_ptr<const void>(lse), dx, stream);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "cuda_bon_token_rewards",
      [](const RowsView& policy, const RowsView* ref_logits, uintptr_t ref_logps, const IndexView& y,
         int64_t ignore_index, double inv_temp, uintptr_t out_diff, uintptr_t err, uintptr_t stream) {
        cuda::bon_token_rewards(policy, ref_logits, as_ptr<const void>(ref_logps), y, ignore_index, inv_temp,
                                as_ptr<void>(out_diff), as_ptr<int64_t>(err), stream);
      },
      py::arg("policy"), py::arg("ref_logits").none(true), py::arg("ref_logps"), py::arg("labels"),
      py::arg("ignore_index"), py::arg("inv_temp"), py::arg("out_diff"), py::arg("err"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "cuda_yes_no_logprobs",
      [](const RowsView& x, const IndexView* positions, uintptr_t yes_ids, int64_t n_yes, uintptr_t no_ids,
         int64_t n_no, uintptr_t out_yes, uintptr_t out_no, uintptr_t err, uintptr_t stream) {
        cuda::yes_no_logprobs(x, positions, TokenSet{as_ptr<const int64_t>(yes_ids), n_yes},
                              TokenSet{as_ptr<const int64_t>(no_ids), n_no}, as_ptr<void>(out_yes),
                              as_ptr<void>(out_no), as_ptr<int64_t>(err), stream);
      },
      py::arg("logits"), py::arg("positions").none(true), py::arg("yes_ids"), py::arg("n_yes"), py::arg("no_ids"),
      py::arg("n_no"), py::arg("out_yes"), py::arg("out_no"), py::arg("err"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());
#endif
}
