//! Shapes shared by the benchmarks, so that every figure names the model it was measured on.

use gemma_lm::GemmaConfig;

/// The `bench-small` language model: Gemma-shaped, hidden 512, 4 layers, 8 query heads and 1 KV
/// head of width 64, MLP 2048, a 32000-token vocabulary, tied embeddings.
pub fn bench_small_lm() -> GemmaConfig {
    GemmaConfig {
        vocab_size: 32000,
        hidden_size: 512,
        intermediate_size: 2048,
        num_hidden_layers: 4,
        num_attention_heads: 8,
        num_key_value_heads: 1,
        head_dim: 64,
        max_position_embeddings: 4096,
        hidden_activation: Some("gelu_pytorch_tanh".into()),
        rope_theta: Some(10000.0),
        ..GemmaConfig::default()
    }
}
