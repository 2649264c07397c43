"""The SAM+CLIP bridge ("Feature Design for Bridging SAM and CLIP toward Referring Image Segmentation",
WACV 2025; shared/specs/bridge.md): PWAM, the two simple feature pyramids, the deformable pixel
decoder, DFAM and the sparse-prompt cross-attention, one file each, in Flax NNX."""
