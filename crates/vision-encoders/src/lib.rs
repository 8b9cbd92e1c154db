//! Frozen vision towers for LLaVA: CLIP ViT and DINOv2, with the image processing that feeds them.
//!
//! The models arrive with issue 3; the crate exists now so that the workspace layout is final.
