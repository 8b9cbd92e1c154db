//! Gemma 2 and Gemma 3 beyond the parity fixtures (`fixtures/hf-parity/gemma2`, `gemma3-text`,
//! checked by `cargo xtask parity`): batched left-padded generation past the sliding window against
//! transformers (`fixtures/hf-generate`, `scripts/make_generate_fixtures.py`), every attention path
//! a model can take against the plain forward (so a path that drops Gemma 2's soft-cap or a window
//! fails), the hub's older config layout, and the errors a mislabelled checkpoint gets.

use std::path::{Path, PathBuf};

use gemma_lm::batch::{decode_step, prefill};
use gemma_lm::{
    ChatTemplate, Decode, Gemma, GemmaConfig, GenerationConfig, KvCache, Message, Packing, Role,
    SlotCache, generate,
};
use tch::{Device, Kind, Tensor};

const FAMILIES: [&str; 2] = ["gemma2", "gemma3-text"];

fn model_dir(name: &str) -> PathBuf {
    foundation::parity_fixtures().join(name).join("model")
}

fn load(name: &str) -> Gemma {
    Gemma::from_pretrained(model_dir(name), Device::Cpu, Kind::Float)
        .unwrap()
        .1
}

fn reference(name: &str) -> std::collections::HashMap<String, Tensor> {
    let path = foundation::parity_fixtures()
        .join("../hf-generate")
        .join(format!("{name}.safetensors"));
    foundation::checkpoint::read_all(path).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
        .abs()
        .max()
        .double_value(&[])
}

fn rows(t: &Tensor) -> Vec<Vec<i64>> {
    (0..t.size()[0])
        .map(|r| Vec::<i64>::try_from(t.get(r)).unwrap())
        .collect()
}

/// The real tokens of each left-padded row.
fn prompts(ids: &Tensor, mask: &Tensor) -> Vec<Vec<i64>> {
    rows(ids)
        .into_iter()
        .zip(rows(mask))
        .map(|(ids, mask)| {
            ids.into_iter()
                .zip(mask)
                .filter(|&(_, m)| m == 1)
                .map(|(id, _)| id)
                .collect()
        })
        .collect()
}

#[test]
fn left_padded_batches_generate_past_the_window_as_transformers_does() {
    for name in FAMILIES {
        let model = load(name);
        let want = reference(name);
        let (ids, mask) = (&want["input_ids"], &want["attention_mask"]);
        let expected = rows(&want["generated_ids"]);
        let steps = want["logits"].size()[1];
        assert!(
            ids.size()[1] + steps > model.config().window().unwrap(),
            "{name}: the reference must run past the window"
        );

        // The step logits, through the KV cache with the padding mask.
        let batch = ids.size()[0];
        let mut cache = KvCache::for_model(&model, batch, ids.size()[1] + steps);
        let mut padding = mask.shallow_clone();
        let mut input = ids.shallow_clone();
        for step in 0..steps {
            let out =
                tch::no_grad(|| model.forward(&input, Some(&padding), Some(&mut cache), false))
                    .unwrap();
            let len = out.last_hidden_state.size()[1];
            let logits = model.logits(&out.last_hidden_state.narrow(1, len - 1, 1));
            let hf = want["logits"].narrow(1, step, 1);
            let diff = max_diff(&logits, &hf);
            assert!(diff < 1e-4, "{name} step {step}: logits differ by {diff}");
            let next = Tensor::from_slice(
                &expected
                    .iter()
                    .map(|row| row[(ids.size()[1] + step) as usize])
                    .collect::<Vec<_>>(),
            )
            .view([batch, 1]);
            input = next;
            padding = Tensor::cat(
                &[
                    padding,
                    Tensor::ones([batch, 1], (Kind::Int64, Device::Cpu)),
                ],
                1,
            );
        }

        // The ids, through `generate` (eager and static steps), which left-pads by itself.
        for decode in [Decode::Eager, Decode::Static] {
            let config = GenerationConfig {
                max_new_tokens: steps as usize,
                decode,
                ..GenerationConfig::default()
            };
            let got = generate(&model, &prompts(ids, mask), &config, |_, _| {}).unwrap();
            for (row, (got, want)) in got.iter().zip(&expected).enumerate() {
                let new = &want[ids.size()[1] as usize..];
                assert_eq!(got, new, "{name} {decode:?} row {row}");
            }
        }
    }
}

/// The logits of `ids` `[batch, len]` (no padding) by the plain forward.
fn plain_logits(model: &Gemma, ids: &Tensor) -> Tensor {
    tch::no_grad(|| {
        model.logits(
            &model
                .forward(ids, None, None, false)
                .unwrap()
                .last_hidden_state,
        )
    })
}

fn sample_ids() -> Tensor {
    Tensor::from_slice(&[2i64, 17, 300, 5, 44, 99, 123, 7, 600, 8, 31, 250, 64, 9]).view([2, 7])
}

#[test]
fn every_attention_path_computes_the_plain_forward() {
    for name in FAMILIES {
        let model = load(name);
        let ids = sample_ids();
        let want = plain_logits(&model, &ids);
        let (b, l) = (ids.size()[0], ids.size()[1]);

        // Token by token through the KV cache.
        let mut cache = KvCache::for_model(&model, b, l);
        let steps: Vec<Tensor> = (0..l)
            .map(|t| {
                let out = tch::no_grad(|| {
                    model.forward(&ids.narrow(1, t, 1), None, Some(&mut cache), false)
                })
                .unwrap();
                model.logits(&out.last_hidden_state)
            })
            .collect();
        let cached = Tensor::cat(&steps, 1);
        assert!(max_diff(&cached, &want) < 1e-4, "{name}: KV cache");

        // The serving slot cache: each row prefilled with its first token, then decoded together.
        let mut slots = SlotCache::for_model(&model, 3, l);
        let (s0, s1) = (slots.acquire().unwrap(), slots.acquire().unwrap());
        let mut got = [Vec::new(), Vec::new()];
        for (row, slot) in [(0, s0), (1, s1)] {
            let first = model.embed(&ids.narrow(0, row, 1).narrow(1, 0, 1));
            let h = prefill(&model, &mut slots, slot, &first).unwrap();
            got[row as usize].push(model.logits(&h));
        }
        for t in 1..l {
            let tokens: Vec<(usize, i64)> = [(s0, 0), (s1, 1)]
                .iter()
                .map(|&(slot, row)| (slot, ids.int64_value(&[row, t])))
                .collect();
            let h = decode_step(&model, &mut slots, &tokens).unwrap();
            for (row, logits) in got.iter_mut().enumerate() {
                logits.push(model.logits(&h.narrow(0, row as i64, 1)));
            }
        }
        let slotted = Tensor::cat(&[Tensor::cat(&got[0], 1), Tensor::cat(&got[1], 1)], 0);
        assert!(max_diff(&slotted, &want) < 1e-4, "{name}: slot cache");

        // A packed row (both samples end to end) against each sample alone.
        let packing = Packing {
            positions: Tensor::arange(l, (Kind::Int64, Device::Cpu))
                .repeat([2])
                .view([1, 2 * l]),
            segments: Tensor::cat(
                &[
                    Tensor::zeros([l], (Kind::Int64, Device::Cpu)),
                    Tensor::ones([l], (Kind::Int64, Device::Cpu)),
                ],
                0,
            )
            .view([1, 2 * l]),
        };
        let embeds = model.embed(&ids.reshape([1, 2 * l]));
        let packed =
            tch::no_grad(|| model.logits(&model.forward_packed(&embeds, &packing).unwrap()));
        assert!(
            max_diff(&packed.view([2, l, -1]), &want) < 1e-4,
            "{name}: packed"
        );

        // Activation checkpointing: the same loss (and so the same logits) as the plain path.
        let labels = ids.shallow_clone();
        let hidden = model
            .forward(&ids, None, None, false)
            .unwrap()
            .last_hidden_state;
        let (plain_loss, _) = model.loss(&hidden, &labels).unwrap();
        let loss = model
            .backward_checkpointed(&model.embed(&ids), |hidden| {
                let (loss, _) = model.loss(hidden, &labels)?;
                Ok((loss.shallow_clone(), loss.detach()))
            })
            .unwrap();
        assert!(max_diff(&loss, &plain_loss) < 1e-5, "{name}: checkpointed");
    }
}

#[test]
fn the_paths_are_checked_against_a_forward_that_keeps_the_cap() {
    // The paths above are compared with the plain forward; that forward is transformers' (parity
    // fixtures). Here: the cap and the window change Gemma 2's logits, so a path that dropped one
    // could not equal the forward.
    let dir = model_dir("gemma2");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let ids = sample_ids();
    let want = plain_logits(&load("gemma2"), &ids);
    for (key, value) in [
        ("attn_logit_softcapping", serde_json::Value::Null),
        ("sliding_window", serde_json::json!(64)),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut changed = config.clone();
        changed[key] = value;
        copy_model(&dir, tmp.path(), &changed);
        let model = Gemma::from_pretrained(tmp.path(), Device::Cpu, Kind::Float)
            .unwrap()
            .1;
        let diff = max_diff(&plain_logits(&model, &ids), &want);
        assert!(diff > 1e-2, "{key} changed nothing ({diff})");
    }
}

fn copy_model(from: &Path, to: &Path, config: &serde_json::Value) {
    std::fs::copy(from.join("model.safetensors"), to.join("model.safetensors")).unwrap();
    std::fs::write(to.join("config.json"), config.to_string()).unwrap();
}

#[test]
fn the_hubs_older_gemma3_layout_builds_the_same_model() {
    // As google/gemma-3-*'s config.json has it: rope_theta, rope_local_base_freq, rope_scaling,
    // sliding_window_pattern (and layer_types absent, so the pattern decides).
    let dir = model_dir("gemma3-text");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let obj = config.as_object_mut().unwrap();
    obj.remove("rope_parameters");
    obj.remove("layer_types");
    obj.remove("_sliding_window_pattern");
    obj.insert("rope_theta".into(), 1e6.into());
    obj.insert("rope_local_base_freq".into(), 1e4.into());
    obj.insert(
        "rope_scaling".into(),
        serde_json::json!({"rope_type": "linear", "factor": 8.0}),
    );
    // Layers 0, 1 and 3 slide and 2 is global in the fixture: a pattern of 3.
    obj.insert("sliding_window_pattern".into(), 3.into());
    let tmp = tempfile::tempdir().unwrap();
    copy_model(&dir, tmp.path(), &config);
    let legacy = Gemma::from_pretrained(tmp.path(), Device::Cpu, Kind::Float)
        .unwrap()
        .1;
    let ids = sample_ids();
    assert!(plain_logits(&legacy, &ids).equal(&plain_logits(&load("gemma3-text"), &ids)));
    // A multimodal Gemma 3 config gives its text_config.
    let wrapped = serde_json::json!({"model_type": "gemma3", "text_config": config});
    let text = GemmaConfig::from_json(&wrapped.to_string()).unwrap();
    assert_eq!(text.model_type.as_deref(), Some("gemma3_text"));
}

#[test]
fn a_mislabelled_checkpoint_is_an_error_that_names_what_is_wrong() {
    let dir = model_dir("gemma2");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let tmp = tempfile::tempdir().unwrap();

    // Gemma 2 weights under a Gemma 1 config: its extra norms are named, not ignored.
    let mut as_gemma1 = config.clone();
    for key in [
        "attn_logit_softcapping",
        "final_logit_softcapping",
        "query_pre_attn_scalar",
        "layer_types",
        "sliding_window",
    ] {
        as_gemma1.as_object_mut().unwrap().remove(key);
    }
    as_gemma1["model_type"] = "gemma".into();
    copy_model(&dir, tmp.path(), &as_gemma1);
    let err = Gemma::from_pretrained(tmp.path(), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("feedforward_layernorm") && err.contains("no module"),
        "{err}"
    );

    // Gemma 2 keys with a Gemma 1 model_type: the config itself says what does not fit.
    let mut mixed = config.clone();
    mixed["model_type"] = "gemma".into();
    let err = GemmaConfig::from_json(&mixed.to_string())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model_type"), "{err}");

    for (key, value, says) in [
        ("model_type", serde_json::json!("llama"), "llama"),
        (
            "rope_parameters",
            serde_json::json!({"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}),
            "yarn",
        ),
        (
            "use_bidirectional_attention",
            serde_json::json!(true),
            "bidirectional",
        ),
        (
            "layer_types",
            serde_json::json!(["full_attention"]),
            "layer_types",
        ),
    ] {
        let mut bad = config.clone();
        bad[key] = value;
        let err = GemmaConfig::from_json(&bad.to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{key}: {err}");
    }
}

#[test]
fn presets_of_the_real_sizes() {
    for (config, layers, sliding) in [
        (GemmaConfig::gemma2_2b(), 26, 13),
        (GemmaConfig::gemma2_9b(), 42, 21),
        (GemmaConfig::gemma3_1b(), 26, 22),
        (GemmaConfig::gemma3_4b(), 34, 29),
        (GemmaConfig::gemma3_12b(), 48, 40),
    ] {
        config.validate().unwrap();
        let types = config.layer_types().unwrap();
        assert_eq!(types.len(), layers);
        let n = types
            .iter()
            .filter(|t| **t == gemma_lm::LayerType::SlidingAttention)
            .count();
        assert_eq!(n, sliding, "{:?}", config.model_type);
    }
    let g3 = GemmaConfig::gemma3_4b();
    assert_eq!(
        g3.rope(gemma_lm::LayerType::FullAttention)
            .unwrap()
            .linear_factor,
        8.0
    );
    assert_eq!(
        g3.rope(gemma_lm::LayerType::SlidingAttention)
            .unwrap()
            .theta,
        1e4
    );
}

#[test]
fn chat_templates_render_as_transformers_renders_them() {
    let path = foundation::parity_fixtures().join("../chat-templates/cases.json");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let template = match case["template"].as_str().unwrap() {
            "gemma" => ChatTemplate::Gemma,
            "gemma3" => ChatTemplate::Gemma3,
            other => panic!("template {other}"),
        };
        let messages: Vec<Message> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message {
                role: Role::parse(m["role"].as_str().unwrap()).unwrap(),
                content: m["content"].as_str().unwrap().into(),
            })
            .collect();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let ours = template.render(&messages, add);
        match case.get("text").and_then(|t| t.as_str()) {
            Some(text) => assert_eq!(ours.unwrap(), text, "{case}"),
            None => assert!(ours.is_err(), "{case}: transformers refused it"),
        }
    }
    // The template is recognised from its source, as a checkpoint ships it.
    assert_eq!(
        ChatTemplate::recognise(gemma_lm::tokenizer::GEMMA3_JINJA),
        ChatTemplate::Gemma3
    );
    assert_eq!(
        ChatTemplate::recognise(gemma_lm::tokenizer::GEMMA_JINJA),
        ChatTemplate::Gemma
    );
}
