//! Connectors that project vision features into the language model's embedding space
//! (`mlp2x_gelu`, `linear`, `identity`).
//!
//! The modules arrive with issue 4; the crate exists now so that the workspace layout is final.
