import pytest
import torch
from torch import nn

from histo_core.model import MODELS, CHANNELS, create_model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_gives_one_logit_per_image(name):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(4, 3, 96, 96))
    assert out.shape == (4,)
    assert torch.isfinite(out).all()


def test_default_model_is_the_original_five_block_cnn():
    model = create_model("simple_cnn", dropout=0.3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == list(CHANNELS) == [32, 64, 128, 256, 512]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 5
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert any(isinstance(m, nn.Dropout) and m.p == 0.3 for m in model.modules())
    assert model.head[-1].out_features == 1


def test_unknown_model_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="choose one of: resnet18, resnet34, resnet50, simple_cnn"):
        create_model("resnet9000")


def test_torchvision_resnets_train_from_scratch_with_our_dropout_head():
    model = create_model("resnet18", dropout=0.2)
    assert isinstance(model.net.fc[0], nn.Dropout) and model.net.fc[0].p == 0.2
    assert model.net.fc[1].out_features == 1
    fresh = create_model("resnet18", dropout=0.2)  # random init each time: no pretrained weights
    assert not torch.equal(model.net.conv1.weight, fresh.net.conv1.weight)


def test_the_ibn_variant_is_the_seed_cnn_with_per_image_normalisation_in_its_first_two_blocks():
    from histo_core.model import InstanceBatchNorm

    ibn, seed = create_model("simple_cnn_ibn"), create_model("simple_cnn")
    norms = [block[1] for block in ibn.features]
    assert [isinstance(n, InstanceBatchNorm) for n in norms] == [True, True, False, False, False]
    assert [c.out_channels for c in ibn.modules() if isinstance(c, nn.Conv2d)] == list(CHANNELS)
    assert [tuple(v.shape) for k, v in ibn.head.state_dict().items()] == [
        tuple(v.shape) for k, v in seed.head.state_dict().items()]


def test_instance_batch_norm_normalises_half_the_channels_per_image_and_half_per_batch():
    """The instance half forgets an image's own per-channel scale and offset (its stain, in
    the first layers) and never looks at the other images; the batch half does both."""
    from histo_core.model import InstanceBatchNorm

    norm = InstanceBatchNorm(8).train()
    x = torch.randn(4, 8, 12, 12)
    restained = x.clone()
    restained[0] = x[0] * torch.linspace(0.5, 3.0, 8).view(8, 1, 1) + torch.linspace(-2, 2, 8).view(8, 1, 1)
    out, out_restained = norm(x), norm(restained)
    assert torch.allclose(out[:, :4], out_restained[:, :4], atol=1e-4)  # every image, instance half
    assert not torch.allclose(out[:, 4:], out_restained[:, 4:], atol=1e-2)  # the batch half sees image 0 change
    assert torch.allclose(out[1:2, :4], norm(x[1:2])[:, :4], atol=1e-5)  # alone or in a batch: the same
    assert norm(x.to(memory_format=torch.channels_last)).allclose(out, atol=1e-5)
