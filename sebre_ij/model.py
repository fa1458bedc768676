"""Mask R-CNN variants and their model card (the checkpoint file itself: `checkpoint.py`).

A model may also carry a semantic branch on its FPN (Panoptic FPN, Kirillov et al. 2019): per-pixel
class scores learnt from every labelled pixel. Brain regions are large, nested and overlapping in
their boxes, which a box classifier trained from scratch on a few sections learns slowly; the
semantic branch gives region maps within minutes on a CPU, while the instance branch still gives
boxes, scores and instances.

The card is what makes a checkpoint usable without its author: the class names and colours, the
pixel size in µm the model was trained at (inference picks the pyramid level from it), the input
channels with their normalisation, and the tile size and overlap.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from .errors import UserError
from .model_input import INPUT_MODES, LUMINANCE

CARD_FORMAT = "sebre-ij-checkpoint/1"
ARCHITECTURES = ("tiny_fpn", "mobilenet_v3_fpn", "resnet50_fpn")


@dataclass
class ModelCard:
    """Everything inference needs to know about a model besides its weights."""

    architecture: str
    classes: list[str]  # index 0 is background
    colors: list[tuple[int, int, int]]
    pixel_size_um: float
    channels: list[str]
    mean: list[float]  # per channel, on images scaled to [0, 1]
    std: list[float]
    tile_size: int = 256
    overlap: int = 64
    training: dict = field(default_factory=dict)
    semantic: bool = False  # a semantic branch gives the class maps (older checkpoints have none)
    input: str = "channels"  # how slide pixels become model input (model_input.py)
    atlas_prior: float = 0.0  # weight of the Allen atlas cut against the class maps (atlas_prior.py); 0: none
    format: str = CARD_FORMAT

    def to_json(self) -> str:
        """The card as JSON; a channels-mode card leaves `input` out, and one without an atlas prior
        `atlas_prior`, as cards were before they existed."""
        data = asdict(self)
        if data["input"] == "channels":
            del data["input"]
        if not data["atlas_prior"]:
            del data["atlas_prior"]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str, source: str = "checkpoint") -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{source}: the model card is not valid JSON ({exc}); re-train or re-export the model"
            ) from exc
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            raise UserError(
                f"{source}: model card format {data.get('format') if isinstance(data, dict) else None!r} "
                f"is not {CARD_FORMAT!r}; use a checkpoint written by this version of sebre-ij (sebre train)"
            )
        fields = cls.__dataclass_fields__
        try:
            missing = [
                f
                for f, spec in fields.items()
                if f not in data and spec.default is MISSING and spec.default_factory is MISSING
            ]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            card = cls(**{k: v for k, v in data.items() if k in fields})
            card.check()
        except (TypeError, ValueError) as exc:
            raise UserError(
                f"{source}: the model card is damaged ({exc}); re-train the model or use the file `sebre train` wrote"
            ) from exc
        card.colors = [tuple(int(v) for v in c) for c in card.colors]
        if card.architecture not in ARCHITECTURES:
            raise UserError(
                f"{source}: unknown architecture {card.architecture!r}; expected one of {', '.join(ARCHITECTURES)}"
            )
        return card

    def check(self) -> None:
        """Raise ValueError where a field would break inference later, far from its cause."""

        def names(value) -> bool:
            return isinstance(value, list) and all(isinstance(v, str) for v in value)

        def numbers(value, n: int) -> bool:
            return (
                isinstance(value, list)
                and len(value) == n
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
            )

        problems = [
            (not names(self.classes) or len(self.classes) < 2, "classes must list background and at least one class"),
            (
                not isinstance(self.colors, list)
                or len(self.colors) != len(self.classes)
                or not all(numbers(c, 3) for c in self.colors),
                "colors must give one RGB triple per class",
            ),
            (
                not numbers([self.pixel_size_um], 1) or self.pixel_size_um <= 0,
                "pixel_size_um must be a positive number",
            ),
            (not names(self.channels) or not self.channels, "channels must name at least one channel"),
            (
                not numbers(self.mean, len(self.channels))
                or not numbers(self.std, len(self.channels))
                or min(self.std, default=0) <= 0,
                "mean and std must give one number per channel, std positive",
            ),
            (
                not isinstance(self.tile_size, int)
                or not isinstance(self.overlap, int)
                or self.tile_size < 1
                or self.overlap < 0,
                "tile_size must be a positive integer, overlap a non-negative one",
            ),
            (not isinstance(self.training, dict), "training must be an object"),
            (not isinstance(self.semantic, bool), "semantic must be true or false"),
            (self.input not in INPUT_MODES, f"input must be one of {', '.join(INPUT_MODES)}"),
            (
                not numbers([self.atlas_prior], 1) or self.atlas_prior < 0 or isinstance(self.atlas_prior, bool),
                "atlas_prior must be a number, 0 or more",
            ),
            (self.input == "luminance" and self.channels != LUMINANCE, f"a luminance model's channels are {LUMINANCE}"),
        ]
        bad = [message for failed, message in problems if failed]
        if bad:
            raise ValueError("; ".join(bad))


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


def _stage(cin: int, cout: int) -> nn.Sequential:
    """A stride-2 residual-free stage: cheap on CPU, enough for region-scale shapes."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
        _gn(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        _gn(cout),
        nn.ReLU(inplace=True),
    )


class TinyBackbone(nn.Module):
    """Five stride-2 stages (strides 2..32) with GroupNorm, so it trains from scratch on small batches."""

    def __init__(self, in_channels: int, widths=(24, 32, 48, 64, 96)):
        super().__init__()
        chans = (in_channels, *widths)
        for i in range(len(widths)):
            self.add_module(f"layer{i + 1}", _stage(chans[i], chans[i + 1]))

    def forward(self, x):
        for layer in self.children():
            x = layer(x)
        return x


def _tiny_fpn(in_channels: int) -> BackboneWithFPN:
    body = TinyBackbone(in_channels)
    returned = {"layer2": "0", "layer3": "1", "layer4": "2", "layer5": "3"}
    return BackboneWithFPN(body, returned, [32, 48, 64, 96], out_channels=64, norm_layer=None)


def _first_conv_for(backbone: nn.Module, in_channels: int) -> None:
    """Swap a torchvision body's RGB stem for one with `in_channels` inputs."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            parent = backbone.get_submodule(name.rsplit(".", 1)[0]) if "." in name else backbone
            new = nn.Conv2d(
                in_channels,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                bias=module.bias is not None,
            )
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return


class SemanticHead(nn.Module):
    """Per-pixel class logits at stride 4 from the FPN levels (the 'pool' level aside): each level
    reduced to 64 channels, brought to the finest level's size and summed."""

    def __init__(self, in_channels: int, levels: int, num_classes: int, width: int = 64):
        super().__init__()
        self.reduce = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), _gn(width), nn.ReLU(inplace=True))
            for _ in range(levels)
        )
        self.classify = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        maps = [f for name, f in features.items() if name != "pool"]
        size = maps[0].shape[-2:]
        x = sum(
            nn.functional.interpolate(r(m), size=size, mode="bilinear", align_corners=False)
            if m.shape[-2:] != size
            else r(m)
            for r, m in zip(self.reduce, maps)
        )
        return self.classify(x)


class RegionMaskRCNN(MaskRCNN):
    """Mask R-CNN with a semantic branch on the same FPN features. Training targets carry a
    "semantic" class map (255: ignore); outputs carry "semantic", (classes, H, W) probabilities."""

    def __init__(self, backbone: BackboneWithFPN, num_classes: int | None, n_classes: int, **kwargs):
        super().__init__(backbone, num_classes, **kwargs)
        self.semantic = SemanticHead(backbone.out_channels, len(backbone.fpn.inner_blocks), n_classes)
        self.class_weights: torch.Tensor | None = None  # for the per-pixel loss; set by training, not saved
        self.instance_weight = 1.0  # of the Mask R-CNN losses beside the per-pixel one; set by training, not saved

    def forward(self, images, targets=None):
        """Training: the Mask R-CNN losses (weighted by `instance_weight`) and the per-pixel loss;
        evaluation: `detect`'s outputs. At weight 0 the RPN and RoI heads are not run, and targets
        need only their "semantic" map."""
        if not self.training:
            return detect(self, images)
        if not self.instance_weight:
            batch, _ = self.transform(images)
            features = self.backbone(batch.tensors)
            return {"loss_semantic": self.semantic_loss(features, batch.tensors.shape[-2:], targets)}
        batch, targets = self.transform(images, targets)
        features = self.backbone(batch.tensors)
        proposals, rpn_losses = self.rpn(batch, features, targets)
        _, roi_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        instance = {**rpn_losses, **roi_losses}
        if self.instance_weight != 1.0:
            instance = {k: v * self.instance_weight for k, v in instance.items()}
        return {**instance, "loss_semantic": self.semantic_loss(features, batch.tensors.shape[-2:], targets)}

    def semantic_loss(
        self, features: dict[str, torch.Tensor], size: tuple[int, int], targets: list[dict]
    ) -> torch.Tensor:
        """Class-weighted per-pixel cross-entropy of the semantic branch against the targets' "semantic" maps."""
        logits = self.semantic_logits(features, size)
        truth = torch.full(logits.shape[:1] + logits.shape[2:], 255, dtype=torch.int64, device=logits.device)
        for i, t in enumerate(targets):
            h, w = t["semantic"].shape
            truth[i, :h, :w] = t["semantic"]
        weights = None if self.class_weights is None else self.class_weights.to(logits.device)
        return nn.functional.cross_entropy(logits, truth, weight=weights, ignore_index=255)

    def semantic_logits(self, features: dict[str, torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Per-pixel class logits of the semantic branch, at the (padded) batch's size."""
        return nn.functional.interpolate(self.semantic(features), size=size, mode="bilinear", align_corners=False)


def detect(
    model: MaskRCNN, images: list[torch.Tensor], *, paste_masks: bool = True, instances: bool = True
) -> list[dict]:
    """A Mask R-CNN's outputs on a batch in evaluation mode: boxes, labels, scores and masks as
    torchvision gives them, and with a semantic branch "semantic", (classes, H, W) probabilities.

    Without `paste_masks` each instance keeps the mask its mask head made ("box_masks",
    (N, 1, M, M)) instead of torchvision pasting it into a canvas the size of the image, one
    instance at a time: the caller resizes it into its box alone (infer.instance_map). Without
    `instances` a model with a semantic branch runs its backbone, FPN and that branch only, and
    each output holds "semantic" alone.

    Notes: with `paste_masks` and `instances` this equals `model(images)` of torchvision's
    GeneralizedRCNN in eval mode; the "semantic" maps are the same either way."""
    original_sizes = [tuple(im.shape[-2:]) for im in images]
    batch, _ = model.transform(images)
    features = model.backbone(batch.tensors)
    if not instances and isinstance(model, RegionMaskRCNN):
        detections = [{} for _ in images]
        _add_semantic(model, features, batch, original_sizes, detections)
        return detections
    proposals, _ = model.rpn(batch, features)
    detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
    boxed = [None if paste_masks else d.pop("masks", None) for d in detections]
    detections = model.transform.postprocess(detections, batch.image_sizes, original_sizes)
    for d, masks in zip(detections, boxed):
        if masks is not None:
            d["box_masks"] = masks
    if isinstance(model, RegionMaskRCNN):
        _add_semantic(model, features, batch, original_sizes, detections)
    return detections


def _add_semantic(model: RegionMaskRCNN, features: dict, batch, original_sizes: list, detections: list[dict]) -> None:
    """Each output's "semantic": the branch's class probabilities at its image's own size."""
    logits = model.semantic_logits(features, batch.tensors.shape[-2:])
    for d, lg, (h, w), size in zip(detections, logits, batch.image_sizes, original_sizes):
        lg = lg[:, :h, :w]
        if (h, w) != size:
            lg = nn.functional.interpolate(lg[None], size=size, mode="bilinear", align_corners=False)[0]
        d["semantic"] = lg.softmax(0)


def build_model(card: ModelCard) -> MaskRCNN:
    """A Mask R-CNN for `card`, fed tiles at their native size (no resize to 800 px)."""
    num_classes = len(card.classes)
    in_ch = len(card.channels)
    common = dict(
        min_size=card.tile_size,
        max_size=card.tile_size,
        image_mean=card.mean,
        image_std=card.std,
        box_detections_per_img=50,
        box_batch_size_per_image=128,
        rpn_batch_size_per_image=128,
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150,
    )
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5)

    def mask_rcnn(backbone, classes, **kwargs):
        if card.semantic:
            return RegionMaskRCNN(backbone, classes, num_classes, **kwargs)
        return MaskRCNN(backbone, classes, **kwargs)

    if card.architecture == "tiny_fpn":
        backbone = _tiny_fpn(in_ch)
        ch = backbone.out_channels
        names = ["0", "1", "2", "3"]
        # CPU training time goes mostly to RoIAlign's backward pass: one sample per bin and fewer,
        # more often positive, sampled proposals (48, half positive) shorten the steps.
        common.update(box_batch_size_per_image=48, box_positive_fraction=0.5)
        return mask_rcnn(
            backbone,
            None,
            rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(names, 7, 1),
            box_head=TwoMLPHead(ch * 49, 256),
            box_predictor=FastRCNNPredictor(256, num_classes),
            mask_roi_pool=MultiScaleRoIAlign(names, 14, 1),
            mask_head=MaskRCNNHeads(ch, [ch] * 4, 1),
            mask_predictor=MaskRCNNPredictor(ch, ch, num_classes),
            **common,
        )
    if card.architecture == "mobilenet_v3_fpn":
        backbone = mobilenet_backbone(
            backbone_name="mobilenet_v3_large", weights=None, fpn=True, norm_layer=nn.BatchNorm2d, trainable_layers=6
        )
        anchors = AnchorGenerator(((32, 64, 128, 256),) * 3, ((0.5, 1.0, 2.0),) * 3)
    else:
        backbone = resnet_fpn_backbone(
            backbone_name="resnet50", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
        )
    if in_ch != 3:
        _first_conv_for(backbone.body, in_ch)
    return mask_rcnn(backbone, num_classes, rpn_anchor_generator=anchors, **common)


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present unless the user asks otherwise."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def random_model(card: ModelCard, seed: int = 0) -> MaskRCNN:
    """A random-weight model whose detections pass segment's thresholds: confident class scores and
    full masks, so tiles give a patchwork of regions crossing tile borders. For tests and benchmarks,
    where an untrained model would find nothing and write nothing."""
    torch.manual_seed(seed)
    model = build_model(card)
    heads = model.roi_heads
    with torch.no_grad():
        scores = heads.box_predictor.cls_score
        scores.weight.mul_(40)  # the class follows what the box holds, so regions vary across a slide
        scores.bias.zero_()
        scores.bias[0] = -8.0  # never background
        heads.mask_predictor.mask_fcn_logits.bias.fill_(4.0)
    return model
