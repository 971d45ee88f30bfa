"""The shared operator test: each op's test class subclasses :class:`OpTester` (torchvision's
RoIOpTester pattern) and gets, for free,

- forward against the pure-PyTorch reference run in float64, over device x dtype x layout x case;
- backward (random output weights) against the float64 reference's gradients;
- ``gradcheck`` in float64 on CPU;
- ``torch.library.opcheck`` of the op (and its backward op) with the compiled extension;
- a check that the public wrapper really reaches the compiled kernel (its reference fallback is
  replaced by one that raises).

A subclass sets ``op`` (the name under ``torch.ops.rib_ext``), ``FALLBACKS`` (the names in
``rib_ext.ops.oracle`` its wrapper falls back to), ``CASES`` / ``GRADCHECK_CASES`` /
``OPCHECK_CASES`` (dicts), ``DTYPES`` and ``LAYOUTS`` (tests/conftest.py parametrises ``case``,
``gcase``, ``ocase``, ``dtype`` and ``layout`` from them), and implements ``make_inputs``, ``call``, ``oracle`` and ``opcheck_calls``.
"""
from __future__ import annotations

import pytest
import torch

from rib_ext import ops
from rib_ext.ops import _extension, oracle

TOLERANCES = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-9, atol=1e-10)}


def _outputs(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _to_float64(args):
    """The inputs of the float64 reference: floating tensors upcast (same values), as leaves."""
    ref = []
    for a in args:
        if torch.is_tensor(a) and a.dtype.is_floating_point:
            a = a.detach().to(torch.float64).requires_grad_(a.requires_grad)
        ref.append(a)
    return tuple(ref)


class OpTester:
    op: str = ""
    FALLBACKS: tuple = ()
    CASES: list = [{}]
    GRADCHECK_CASES: list = [{}]
    OPCHECK_CASES: list = [{}]
    LAYOUTS = ("contiguous", "channels_last", "noncontiguous")
    DTYPES = (torch.float32, torch.float64)

    # -- to implement --------------------------------------------------------------------------
    def make_inputs(self, case, device, dtype, layout, requires_grad=True):
        raise NotImplementedError

    def call(self, args, case):
        """The public wrapper (what the package calls)."""
        raise NotImplementedError

    def oracle(self, args, case):
        """The pure-PyTorch reference, on the same arguments (upcast to float64 by the base)."""
        raise NotImplementedError

    def opcheck_calls(self, case, device):
        """``[(torch.ops.rib_ext.<op>.default, args), ...]`` for ``torch.library.opcheck``."""
        raise NotImplementedError

    def tolerances(self, dtype):
        return TOLERANCES[dtype]

    # -- the shared tests ----------------------------------------------------------------------
    def test_forward_and_backward(self, case, device, dtype, layout):
        args = self.make_inputs(case, device, dtype, layout)
        ref_args = _to_float64(args)
        outs, refs = _outputs(self.call(args, case)), _outputs(self.oracle(ref_args, case))
        assert len(outs) == len(refs)
        tol = self.tolerances(dtype)
        for out, ref in zip(outs, refs):
            torch.testing.assert_close(out.detach().to(torch.float64), ref.detach(), **tol)
        diff = [(o, r) for o, r in zip(outs, refs) if o.requires_grad]
        inputs = [(a, r) for a, r in zip(args, ref_args) if torch.is_tensor(a) and a.requires_grad]
        if not diff or not inputs:
            return
        g = torch.Generator().manual_seed(5)
        weights = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(device) for o, _ in diff]
        grads = torch.autograd.grad([o for o, _ in diff], [a for a, _ in inputs],
                                    [w.to(o.dtype) for w, (o, _) in zip(weights, diff)])
        grads_ref = torch.autograd.grad([r for _, r in diff], [r for _, r in inputs], weights)
        for grad, grad_ref, (a, _) in zip(grads, grads_ref, inputs):
            assert grad.dtype == a.dtype and grad.shape == a.shape
            torch.testing.assert_close(grad.to(torch.float64), grad_ref, **tol)

    def test_gradcheck_float64(self, gcase):
        args = self.make_inputs(gcase, "cpu", torch.float64, "contiguous")
        diff = [i for i, a in enumerate(args) if torch.is_tensor(a) and a.requires_grad]
        if not diff:
            pytest.skip(f"{self.op} is not differentiable")

        def fn(*tensors):
            full = list(args)
            for i, t in zip(diff, tensors):
                full[i] = t
            return tuple(o for o in _outputs(self.call(tuple(full), gcase)) if o.requires_grad)

        assert torch.autograd.gradcheck(fn, tuple(args[i] for i in diff))

    @pytest.mark.skipif(not ops.HAS_C, reason="opcheck needs the compiled extension")
    def test_opcheck(self, ocase, device):
        for overload, args in self.opcheck_calls(ocase, device):
            torch.library.opcheck(overload, args)

    @pytest.mark.skipif(not ops.HAS_C, reason="needs the compiled extension")
    def test_wrapper_runs_the_compiled_kernel(self, device, monkeypatch):
        assert self.op in _extension.registered_ops() and self.op in ops._extension.OPS
        assert ops.backend(self.op, device) == f"compiled-{device}"
        backward = f"_{self.op}_backward"
        if backward in _extension.registered_ops():
            assert _extension.has_kernel(backward, device)

        def fallback_called(*a, **k):
            raise AssertionError(f"{self.op}: the wrapper ran the Python reference, not the kernel")

        for name in self.FALLBACKS:
            monkeypatch.setattr(oracle, name, fallback_called)
        case = self.CASES[0]
        args = self.make_inputs(case, device, torch.float32, "contiguous")
        outs = _outputs(self.call(args, case))
        if any(o.requires_grad for o in outs):
            torch.autograd.grad([o.sum() for o in outs if o.requires_grad],
                                [a for a in args if torch.is_tensor(a) and a.requires_grad])
