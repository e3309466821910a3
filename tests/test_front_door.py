"""The package front door, the shared validation helpers, the runtime policies and the input spec."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import spade_utils
from spade_utils import inputs, runtime, validation


def test_front_door_exports_the_documented_names():
    from spade_utils import attribute, load_model, sample_image, spade_pruned_copy, spade_trace, visualize

    assert all(
        callable(f) for f in (attribute, load_model, sample_image, spade_pruned_copy, spade_trace, visualize)
    )
    assert isinstance(spade_utils.__version__, str) and spade_utils.__version__.count(".") == 2
    with pytest.raises(AttributeError):
        spade_utils.no_such_name  # noqa: B018


@pytest.mark.parametrize("bad", [1.7, 2.0, "3", True, None, np.float32(1.0)])
def test_check_int_refuses_non_integers_instead_of_truncating(bad):
    with pytest.raises(TypeError, match="seed"):
        validation.check_seed(bad)


def test_check_int_accepts_numpy_ints_and_checks_bounds():
    assert validation.check_int(np.int64(5), "n", minimum=1) == 5
    with pytest.raises(ValueError, match="blocksize must be >= 1"):
        validation.check_positive_int(0, "blocksize")
    with pytest.raises(ValueError, match="seed"):
        validation.check_seed(-1)
    assert validation.numpy_seed(2**32) == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_float_refuses_non_finite(bad):
    with pytest.raises(ValueError, match="scale must be a finite number"):
        validation.check_float(bad, "scale")


def test_check_float_bounds_and_sparsity():
    assert validation.check_sparsity(0) == 0.0
    with pytest.raises(ValueError, match="sparsity must be < 1"):
        validation.check_sparsity(1.0)
    with pytest.raises(ValueError, match="percdamp must be >= 0"):
        validation.check_float(-0.01, "percdamp", low=0)
    with pytest.raises(TypeError):
        validation.check_float(True, "x")


def test_check_class_index_refuses_negative_and_fractional_targets():
    assert validation.check_class_index(torch.tensor(3), "target", 10) == 3
    with pytest.raises(ValueError, match="target"):
        validation.check_class_index(-1, "target", 10)
    with pytest.raises(ValueError, match="target"):
        validation.check_class_index(10, "target", 10)
    with pytest.raises(TypeError, match="target"):
        validation.check_class_index(3.7, "target", 10)
    with pytest.raises(TypeError, match="target"):
        validation.check_class_index(torch.tensor(3.7), "target", 10)


def test_check_finite_tensor():
    validation.check_finite_tensor(torch.zeros(3), "x")
    with pytest.raises(ValueError, match="image holds NaN"):
        validation.check_finite_tensor(torch.tensor([0.0, math.nan]), "image")


@pytest.mark.parametrize("initially", [True, False])
def test_flush_denormals_restores_the_global_flag_as_found(initially):
    if not torch.set_flush_denormal(initially):
        pytest.skip("flush-denormal not supported on this CPU")
    try:
        assert runtime.flush_denormal_enabled() == initially
        with runtime.flush_denormals():
            assert runtime.flush_denormal_enabled()
        assert runtime.flush_denormal_enabled() == initially
        with pytest.raises(KeyError), runtime.flush_denormals():
            raise KeyError
        assert runtime.flush_denormal_enabled() == initially
    finally:
        torch.set_flush_denormal(False)


def test_one_cpu_thread_restores_thread_count_after_an_error():
    n = torch.get_num_threads()
    with pytest.raises(RuntimeError), runtime.one_cpu_thread():
        assert torch.get_num_threads() == 1
        raise RuntimeError
    assert torch.get_num_threads() == n


def test_eval_mode_restores_per_module_flags():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout())
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    with runtime.eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_model_device_and_dtype():
    m = nn.Linear(2, 2).double()
    assert runtime.model_dtype(m) == torch.float64
    assert runtime.model_device(m).type == "cpu"
    assert runtime.model_dtype(nn.ReLU()) == torch.float32
    with pytest.raises(ValueError, match="device"):
        runtime.resolve_device("gpu7")
    with pytest.raises(TypeError, match="device"):
        runtime.resolve_device(3)


def test_input_spec_from_tag_timm_cfg_and_vit():
    m = nn.Linear(2, 2)
    assert inputs.input_spec(m) == inputs.InputSpec()
    m.spade_input_spec = inputs.IMAGENET_224
    assert inputs.input_spec(m) == inputs.IMAGENET_224
    t = nn.Linear(2, 2)
    t.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    assert inputs.input_spec(t) == inputs.InputSpec(32, (0.5,) * 3, (0.25,) * 3)
    from torchvision.models import VisionTransformer

    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=16)
    assert inputs.input_spec(vit).size == 32
    assert inputs.input_spec(nn.DataParallel(m)) == inputs.IMAGENET_224


def test_resolve_input_spec_refuses_unknown_and_names_the_argument():
    m = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="input_size=224"):
        inputs.resolve_input_spec(m, fn_name="spade_trace")
    spec = inputs.resolve_input_spec(m, size=32, mean=(0.5,) * 3, std=(0.2,) * 3)
    assert spec.size == 32
    with pytest.raises(ValueError, match="std"):
        inputs.InputSpec(32, (0.5,) * 3, (0.0,) * 3)
