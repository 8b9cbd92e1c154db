//! Parity with Hugging Face `transformers` for the kinds this crate owns, on the fixtures of
//! `fixtures/hf-parity` (the machinery is [`foundation::parity`]):
//!
//! * `tokenizer`: special token ids, the vocabulary size, and each case's ids and decoded text
//!   ([`tokenizer`]);
//! * `gemma-causal-lm`: logits and hidden states where the mask is 1 (with the mask, and on the
//!   unmasked training path), the loss, and greedy generation ([`causal_lm`]).

use std::path::Path;

use foundation::parity::{
    Check, Meta, at_real_positions, close, count_differences, exact, need, token_check, token_rows,
};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use crate::{Gemma, GemmaTokenizer, GenerationConfig, Result};

/// A `tokenizer` fixture: `special_ids`, `vocab_size` and the `cases` of `meta.json`.
pub fn tokenizer(dir: &Path, meta: &Meta) -> Result<Vec<Check>> {
    let tokenizer = GemmaTokenizer::from_file(meta.model_path(dir))?;
    let mut checks = Vec::new();
    if let Some(specials) = meta.extra.get("special_ids").and_then(|v| v.as_object()) {
        for (token, id) in specials {
            let got = tokenizer.token_id(token);
            checks.push(exact(
                format!("special {token}"),
                got == id.as_i64(),
                format!("got {got:?}"),
            ));
        }
    }
    if let Some(size) = meta.extra.get("vocab_size").and_then(|v| v.as_u64()) {
        let got = tokenizer.vocab_size();
        checks.push(exact(
            "vocab_size".into(),
            got as u64 == size,
            format!("got {got}"),
        ));
    }
    let cases: Vec<TokenizerCase> = meta.extra_field(dir, "cases")?.unwrap_or_default();
    for (i, case) in cases.iter().enumerate() {
        let ids = tokenizer.encode(&case.text, true)?;
        let differ = count_differences(&ids, &case.ids);
        checks.push(Check {
            output: format!("case {i} ids"),
            max_abs_diff: differ as f64,
            passed: differ == 0,
            note: format!("got {ids:?}"),
        });
        if let Some(decoded) = &case.decoded {
            let got = tokenizer.decode(&case.ids, true)?;
            checks.push(exact(
                format!("case {i} decoded"),
                &got == decoded,
                format!("got {got:?}"),
            ));
        }
    }
    Ok(checks)
}

/// One case of a `tokenizer` fixture: the text, its ids (with `<bos>`) and, optionally, the ids
/// decoded without special tokens.
#[derive(Debug, Deserialize)]
struct TokenizerCase {
    text: String,
    ids: Vec<i64>,
    decoded: Option<String>,
}

/// A `gemma-causal-lm` fixture, in f32 on the CPU: `logits` and every `hidden_states` where the
/// attention mask is 1, the logits again on the causal path without a mask, the `loss` at the
/// `labels`, and greedy generation after `prompt_ids` ([`greedy_check`]).
pub fn causal_lm(dir: &Path, meta: &Meta) -> Result<Vec<Check>> {
    let (_vs, model) = Gemma::from_pretrained(meta.model_path(dir), Device::Cpu, Kind::Float)?;
    let inputs = meta.read_inputs(dir)?;
    let expected = meta.read_expected(dir)?;
    let tol = meta.tolerance();
    let mut checks = Vec::new();

    let ids = need(&inputs, "input_ids", dir)?;
    let mask = inputs.get("attention_mask");
    let out = tch::no_grad(|| model.forward(ids, mask, None, true))?;
    let at_real = |t: &Tensor| at_real_positions(t, mask);
    let logits = model.logits(&out.last_hidden_state);
    if let Some(want) = expected.get("logits") {
        checks.push(close("logits", &at_real(&logits), &at_real(want), tol));
    }
    if let Some(want) = expected.get("hidden_states") {
        for (i, got) in out.hidden_states.iter().enumerate() {
            let want_i = want.get(i as i64);
            checks.push(close(
                &format!("hidden_states[{i}]"),
                &at_real(got),
                &at_real(&want_i),
                tol,
            ));
        }
        if want.size()[0] != out.hidden_states.len() as i64 {
            checks.push(exact(
                "hidden_states count".into(),
                false,
                format!(
                    "expected {}, got {}",
                    want.size()[0],
                    out.hidden_states.len()
                ),
            ));
        }
    }
    // The training path: causal attention without a mask, exact wherever the mask is 1.
    if let (Some(want), Some(_)) = (expected.get("logits"), mask) {
        let fast = tch::no_grad(|| model.forward(ids, None, None, false))?;
        let got = model.logits(&fast.last_hidden_state);
        checks.push(close(
            "logits (causal, no mask)",
            &at_real(&got),
            &at_real(want),
            tol,
        ));
    }
    if let (Some(want), Some(labels)) = (expected.get("loss"), inputs.get("labels")) {
        let (loss, _) = tch::no_grad(|| model.loss(&out.last_hidden_state, labels))?;
        checks.push(close("loss", &loss.reshape([1]), &want.reshape([1]), tol));
    }
    if let (Some(want), Some(prompt)) = (expected.get("generated_ids"), inputs.get("prompt_ids")) {
        checks.push(greedy_check(&model, prompt, want)?);
    }
    Ok(checks)
}

/// Greedy generation without early stop after each row of `prompt`, compared token for token
/// (prompt included) with the rows of `want`.
pub fn greedy_check(model: &Gemma, prompt: &Tensor, want: &Tensor) -> Result<Check> {
    let prompts = token_rows(prompt)?;
    let want = token_rows(want)?;
    let new_tokens = want[0].len().saturating_sub(prompts[0].len());
    let config = GenerationConfig {
        max_new_tokens: new_tokens,
        ..GenerationConfig::default()
    };
    let generated = crate::generate(model, &prompts, &config, |_, _| {})?;
    Ok(token_check(&prompts, &generated, &want))
}
