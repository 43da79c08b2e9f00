"""Volume models export to SavedModel, ONNX (gather path, and native 5-D GridSample + AffineGrid at
opset 20) and LiteRT, each validated in its runtime against Keras."""

import keras
import onnx
import pytest

import stn_keras
from stn_keras.export import export_litert, export_onnx, export_savedmodel
from tests.export.models import VOLUME_MODES, sampler_model

# One xdist worker converts these models: each module's conversions are independent but heavy.
pytestmark = pytest.mark.xdist_group("export_volumes")

INPUT_SHAPE, OUTPUT_SIZE = (5, 4, 6, 2), (3, 4, 5)


@pytest.fixture(scope="module")
def volume_model():
    """All 12 volume modes, each a `TransformSampler` of a (3, 4) theta that depends on the input."""
    return sampler_model(VOLUME_MODES, input_shape=INPUT_SHAPE, output_size=OUTPUT_SIZE)


def _ops(path):
    return [node.op_type for node in onnx.load(path).graph.node]


def test_volume_model_exports_natively_with_5d_gridsample_and_affinegrid(volume_model, tmp_path):
    path = tmp_path / "volume.onnx"
    report = export_onnx(volume_model, path, native_gridsample=True)
    assert report.passed
    assert max(report.errors.values()) <= report.tolerance
    ops = _ops(path)
    assert ops.count("GridSample") == ops.count("AffineGrid") == len(VOLUME_MODES)
    assert "GatherND" not in ops and "Gather" not in ops  # no gather decomposition left


@pytest.mark.parametrize(
    "exporter, name",
    [(export_onnx, "g.onnx"), (export_savedmodel, "sm"), (export_litert, "m.tflite")],
)
def test_volume_model_exports_on_the_gather_path_savedmodel_and_litert(
    volume_model, exporter, name, tmp_path
):
    report = exporter(volume_model, tmp_path / name)
    assert report.passed
    assert (tmp_path / name).exists()


def test_volume_sampler_below_opset_20_stays_on_the_gather_path_with_a_warning(tmp_path):
    model = sampler_model(VOLUME_MODES[:1], input_shape=INPUT_SHAPE, output_size=OUTPUT_SIZE)
    path = tmp_path / "volume18.onnx"
    with pytest.warns(UserWarning, match="samples a volume.*opset 20.*gather path"):
        report = export_onnx(model, path, opset=18, native_gridsample=True)
    assert report.passed
    assert "GridSample" not in _ops(path)


def test_default_volume_spatial_transformer_exports_natively(tmp_path):
    # The default 3-D localisation network resizes with a sampler of its own: two GridSamples.
    model = keras.Sequential(
        [keras.Input(INPUT_SHAPE), stn_keras.SpatialTransformer(output_size=OUTPUT_SIZE)]
    )
    path = tmp_path / "stn3d.onnx"
    report = export_onnx(model, path, native_gridsample=True)
    assert report.passed
    assert _ops(path).count("GridSample") == 2
