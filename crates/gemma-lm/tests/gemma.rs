//! Gemma beyond the parity fixture: the checkpoint layouts people have, the KV cache, batching,
//! dtypes, the loss and errors.

use std::path::{Path, PathBuf};

use foundation::{Checkpoint, save_safetensors};
use gemma_lm::{Gemma, GemmaConfig, GenerationConfig, KvCache, generate};
use tch::{Device, Kind, Tensor};

fn fixture_model() -> PathBuf {
    foundation::parity_fixtures().join("gemma/model")
}

fn load(dir: &Path) -> Gemma {
    Gemma::from_pretrained(dir, Device::Cpu, Kind::Float)
        .unwrap()
        .1
}

fn sample_ids() -> Tensor {
    Tensor::from_slice(&[2i64, 17, 300, 5, 44, 99, 123, 7, 600, 8]).view([1, 10])
}

fn logits_of(model: &Gemma, ids: &Tensor) -> Tensor {
    tch::no_grad(|| {
        model.logits(
            &model
                .forward(ids, None, None, false)
                .unwrap()
                .last_hidden_state,
        )
    })
}

/// Writes the fixture's tensors under new names, split across `shards` files with an index.
fn write_layout(dir: &Path, config: &str, rename: impl Fn(&str) -> Option<String>, shards: usize) {
    let ckpt = Checkpoint::open(fixture_model()).unwrap();
    let tensors: Vec<(String, Tensor)> = ckpt
        .names()
        .filter_map(|n| rename(n).map(|new| (new, ckpt.tensor(n).unwrap())))
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    if shards == 1 {
        save_safetensors(dir.join("model.safetensors"), &tensors, None).unwrap();
        return;
    }
    let per = tensors.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in tensors.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", i + 1);
        save_safetensors(dir.join(&file), chunk, None).unwrap();
        for (name, _) in chunk {
            weight_map.insert(name.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

/// The fixture's config in the transformers 4 layout that google/gemma-2b ships.
fn transformers4_config() -> String {
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_model().join("config.json")).unwrap(),
    )
    .unwrap();
    let obj = config.as_object_mut().unwrap();
    obj.remove("rope_parameters");
    obj.remove("hidden_activation");
    obj.insert("rope_theta".into(), 10000.0.into());
    obj.insert("hidden_act".into(), "gelu".into());
    obj.insert("rope_scaling".into(), serde_json::Value::Null);
    config.to_string()
}

#[test]
fn sharded_checkpoint_in_the_gemma_2b_layout_loads_identically() {
    let tmp = tempfile::tempdir().unwrap();
    write_layout(
        tmp.path(),
        &transformers4_config(),
        |n| Some(n.to_string()),
        3,
    );
    let reference = load(&fixture_model());
    let sharded = load(tmp.path());
    assert!(logits_of(&reference, &sample_ids()).equal(&logits_of(&sharded, &sample_ids())));
}

#[test]
fn language_model_inside_llava_checkpoints_loads() {
    let config = std::fs::read_to_string(fixture_model().join("config.json")).unwrap();
    let reference = logits_of(&load(&fixture_model()), &sample_ids());
    for prefix in ["language_model.model.", "model.language_model.", ""] {
        let tmp = tempfile::tempdir().unwrap();
        write_layout(
            tmp.path(),
            &config,
            |n| Some(format!("{prefix}{}", n.strip_prefix("model.").unwrap())),
            1,
        );
        let got = logits_of(&load(tmp.path()), &sample_ids());
        assert!(got.equal(&reference), "prefix {prefix:?}");
    }
}

#[test]
fn untied_head_is_read_from_lm_head() {
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_model().join("config.json")).unwrap(),
    )
    .unwrap();
    config["tie_word_embeddings"] = false.into();
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = Checkpoint::open(fixture_model()).unwrap();
    let mut tensors: Vec<(String, Tensor)> = ckpt
        .names()
        .map(|n| (n.to_string(), ckpt.tensor(n).unwrap()))
        .collect();
    let head = ckpt.tensor("model.embed_tokens.weight").unwrap() * 2.0;
    tensors.push(("lm_head.weight".into(), head));
    std::fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
    save_safetensors(tmp.path().join("model.safetensors"), &tensors, None).unwrap();
    let untied = load(tmp.path());
    let tied = load(&fixture_model());
    let ids = sample_ids();
    let hidden = tch::no_grad(|| {
        tied.forward(&ids, None, None, false)
            .unwrap()
            .last_hidden_state
    });
    let want = tied.logits(&hidden) * 2.0;
    assert!(logits_of(&untied, &ids).allclose(&want, 1e-5, 1e-5, false));
}

#[test]
fn missing_and_misshaped_tensors_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(fixture_model().join("config.json")).unwrap();
    write_layout(
        tmp.path(),
        &config,
        |n| (!n.contains("layers.1.mlp.up_proj")).then(|| n.into()),
        2,
    );
    let err = Gemma::from_pretrained(tmp.path(), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let wrong = config.replace("\"intermediate_size\": 160", "\"intermediate_size\": 128");
    assert_ne!(wrong, config);
    write_layout(tmp.path(), &wrong, |n| Some(n.into()), 2);
    let err = Gemma::from_pretrained(tmp.path(), Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("mlp.") && err.contains("160") && err.contains("128"),
        "{err}"
    );
    assert!(err.contains(".safetensors"), "names the file: {err}");
}

#[test]
fn cached_decoding_matches_the_full_forward() {
    let model = load(&fixture_model());
    let ids = sample_ids();
    let full = logits_of(&model, &ids);
    let mut cache = KvCache::for_model(&model, 1, 16);
    let mut pieces = Vec::new();
    tch::no_grad(|| {
        // A prefill of 4, a chunk of 3 (explicit causal mask with an offset), then single tokens.
        for (start, len) in [(0, 4), (4, 3), (7, 1), (8, 1), (9, 1)] {
            let out = model
                .forward(&ids.narrow(1, start, len), None, Some(&mut cache), false)
                .unwrap();
            pieces.push(model.logits(&out.last_hidden_state));
        }
    });
    let stepped = Tensor::cat(&pieces, 1);
    // Single-token steps multiply by foundation::cpu_gemv's kernels, the prompt by libtorch's GEMM:
    // the same f32 products summed in another order (a few parts in a million of the logits).
    assert!(stepped.allclose(&full, 1e-5, 1e-4, false));
    assert_eq!(cache.len(), 10);
}

#[test]
fn batched_left_padded_generation_matches_one_at_a_time() {
    let model = load(&fixture_model());
    let prompts = vec![
        vec![2i64, 40, 41, 42, 43, 44, 45],
        vec![2i64, 300, 301],
        vec![2i64, 7],
    ];
    let config = GenerationConfig {
        max_new_tokens: 8,
        ..GenerationConfig::default()
    };
    let batched = generate(&model, &prompts, &config, |_, _| {}).unwrap();
    for (prompt, got) in prompts.iter().zip(&batched) {
        let alone = generate(&model, std::slice::from_ref(prompt), &config, |_, _| {}).unwrap();
        assert_eq!(got, &alone[0], "prompt {prompt:?}");
    }
}

#[test]
fn stop_tokens_end_a_row_and_stream_in_order() {
    let model = load(&fixture_model());
    let prompt = vec![vec![2i64, 40, 41]];
    let free = generate(
        &model,
        &prompt,
        &GenerationConfig {
            max_new_tokens: 6,
            ..Default::default()
        },
        |_, _| {},
    )
    .unwrap();
    let stop = free[0][2];
    let mut streamed = Vec::new();
    let config = GenerationConfig {
        max_new_tokens: 6,
        stop_tokens: vec![stop],
        ..Default::default()
    };
    let stopped = generate(&model, &prompt, &config, |row, t| streamed.push((row, t))).unwrap();
    let first_stop = free[0].iter().position(|&t| t == stop).unwrap();
    assert_eq!(stopped[0], free[0][..=first_stop]);
    assert_eq!(streamed.iter().map(|s| s.1).collect::<Vec<_>>(), stopped[0]);
}

#[test]
fn sampling_is_reproducible_from_its_seed() {
    let model = load(&fixture_model());
    let prompt = vec![vec![2i64, 40, 41]];
    let config = |seed| GenerationConfig {
        max_new_tokens: 10,
        temperature: Some(1.5),
        top_k: Some(50),
        top_p: Some(0.9),
        seed,
        ..Default::default()
    };
    let a = generate(&model, &prompt, &config(1), |_, _| {}).unwrap();
    let b = generate(&model, &prompt, &config(1), |_, _| {}).unwrap();
    assert_eq!(a, b);
    assert_eq!(a[0].len(), 10);
}

#[test]
fn half_precision_matches_f32_within_its_tolerance() {
    let ids = sample_ids();
    let reference = logits_of(&load(&fixture_model()), &ids);
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    }
    for device in devices {
        for kind in [Kind::BFloat16, Kind::Half] {
            let (_vs, model) = Gemma::from_pretrained(fixture_model(), device, kind).unwrap();
            let got = logits_of(&model, &ids)
                .to_device(Device::Cpu)
                .to_kind(Kind::Float);
            let scale = reference.abs().max().double_value(&[]);
            let err = (&got - &reference).abs().max().double_value(&[]);
            // bf16 keeps 8 bits of mantissa: a few units in its last place after 2 layers.
            assert!(
                err < 0.05 * scale,
                "{device:?} {kind:?}: max error {err} vs scale {scale}"
            );
            let agree = got
                .argmax(-1, false)
                .eq_tensor(&reference.argmax(-1, false));
            assert!(
                agree
                    .to_kind(Kind::Float)
                    .mean(Kind::Float)
                    .double_value(&[])
                    >= 0.8
            );
        }
    }
}

#[test]
fn loss_at_labelled_positions_equals_full_cross_entropy() {
    let model = load(&fixture_model());
    let ids = sample_ids();
    let labels =
        Tensor::from_slice(&[-100i64, -100, -100, 5, 44, 99, -100, 7, 600, 8]).view([1, 10]);
    let hidden = tch::no_grad(|| {
        model
            .forward(&ids, None, None, false)
            .unwrap()
            .last_hidden_state
    });
    let (loss, count) = model.loss(&hidden, &labels).unwrap();
    assert_eq!(count, 6);
    let logits = model.logits(&hidden).narrow(1, 0, 9).reshape([9, -1]);
    let full = logits.cross_entropy_loss::<Tensor>(
        &labels.narrow(1, 1, 9).reshape([9]),
        None,
        tch::Reduction::Mean,
        -100,
        0.0,
    );
    assert!(loss.allclose(&full, 1e-6, 1e-6, false));
    let none = Tensor::full([1, 10], -100, (Kind::Int64, Device::Cpu));
    let (zero, count) = model.loss(&hidden, &none).unwrap();
    assert_eq!((zero.double_value(&[]), count), (0.0, 0));
}

#[test]
fn a_few_steps_of_training_lower_the_loss() {
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let model = Gemma::new(&vs.root(), &GemmaConfig::tiny(64)).unwrap();
    let ids = Tensor::randint(64, [4, 12], (Kind::Int64, Device::Cpu));
    let mut opt =
        tch::nn::OptimizerConfig::build(tch::nn::adamw(0.9, 0.999, 0.0), &vs, 1e-2).unwrap();
    let mut losses = Vec::new();
    for _ in 0..20 {
        let hidden = model
            .forward(&ids, None, None, false)
            .unwrap()
            .last_hidden_state;
        let (loss, _) = model.loss(&hidden, &ids).unwrap();
        opt.backward_step(&loss);
        losses.push(loss.double_value(&[]));
    }
    assert!(losses[19] < 0.5 * losses[0], "{losses:?}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let model = load(&fixture_model());
    let err = model
        .forward(
            &Tensor::from_slice(&[1i64, 640]).view([1, 2]),
            None,
            None,
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("640"), "{err}");
    assert!(generate(&model, &[vec![]], &GenerationConfig::default(), |_, _| {}).is_err());
    let err = Gemma::from_pretrained("/nonexistent/model", Device::Cpu, Kind::Float).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/model"), "{err}");
}

#[test]
fn streamed_text_is_the_decoded_text_even_with_byte_fallback() {
    let tokenizer = gemma_lm::GemmaTokenizer::from_file(fixture_model()).unwrap();
    let ids = tokenizer
        .encode("  two  spaces and éè unicode 中文 😀", true)
        .unwrap();
    let mut streamer = gemma_lm::TextStreamer::new(&tokenizer);
    let streamed: String = ids.iter().map(|&id| streamer.push(id).unwrap()).collect();
    assert_eq!(streamed, tokenizer.decode(&ids, true).unwrap());
    // Arbitrary byte tokens never panic the streamer.
    let mut streamer = gemma_lm::TextStreamer::new(&tokenizer);
    for id in [200i64, 201, 175, 44, 201, 201, 300, 250, 250, 250, 5] {
        streamer.push(id).unwrap();
    }
}

#[test]
fn bos_comes_first_with_or_without_a_post_processor() {
    let with = gemma_lm::GemmaTokenizer::from_file(fixture_model()).unwrap();
    let text = "What is the color of the circle?";
    let ids = with.encode(text, true).unwrap();
    assert_eq!(ids[0], with.bos);
    assert_eq!(with.encode(text, false).unwrap(), ids[1..]);

    let mut json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_model().join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    json["post_processor"] = serde_json::Value::Null;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("tokenizer.json"), json.to_string()).unwrap();
    let without = gemma_lm::GemmaTokenizer::from_file(tmp.path()).unwrap();
    assert_eq!(without.encode(text, true).unwrap(), ids);
}

/// Static decoding steps (what a CUDA graph records: the whole cache under a mask, inputs in
/// device tensors) choose the tokens eager steps choose, with left-padded prompts too.
#[test]
fn static_decoding_steps_generate_what_eager_steps_generate() {
    use gemma_lm::Decode;
    let model = load(&fixture_model());
    let prompts = vec![vec![2i64, 17, 300, 5, 44, 99], vec![2i64, 600, 8]];
    let run = |decode| {
        let config = GenerationConfig {
            max_new_tokens: 12,
            decode,
            ..Default::default()
        };
        let mut streamed = Vec::new();
        let out = generate(&model, &prompts, &config, |row, token| {
            streamed.push((row, token))
        })
        .unwrap();
        (out, streamed)
    };
    let eager = run(Decode::Eager);
    assert_eq!(eager.0[0].len(), 12);
    assert_eq!(run(Decode::Static), eager);
    assert_eq!(run(Decode::Auto), eager, "on the CPU, Auto is eager");
    // One prompt alone (no padding mask) as well.
    let single = |decode| {
        let config = GenerationConfig {
            max_new_tokens: 9,
            decode,
            ..Default::default()
        };
        generate(&model, &prompts[..1], &config, |_, _| {}).unwrap()
    };
    assert_eq!(single(Decode::Static), single(Decode::Eager));
}

/// A row that stops early is fed pad tokens while the others go on, and sampling reads the
/// static step's logits as it reads eager ones: both as eager steps do.
#[test]
fn static_decoding_steps_stop_rows_and_sample_as_eager_steps_do() {
    use gemma_lm::Decode;
    let model = load(&fixture_model());
    let prompts = vec![vec![2i64, 17, 300, 5], vec![2i64, 600, 8, 9, 10, 11]];
    let free = generate(
        &model,
        &prompts,
        &GenerationConfig {
            max_new_tokens: 10,
            decode: Decode::Eager,
            ..Default::default()
        },
        |_, _| {},
    )
    .unwrap();
    let run = |decode, temperature| {
        let config = GenerationConfig {
            max_new_tokens: 10,
            stop_tokens: vec![free[0][3]],
            temperature,
            seed: 11,
            decode,
            ..Default::default()
        };
        generate(&model, &prompts, &config, |_, _| {}).unwrap()
    };
    let eager = run(Decode::Eager, None);
    assert!(
        eager[0].len() <= 4,
        "row 0 stops at its fourth token or before"
    );
    assert_eq!(run(Decode::Static, None), eager);
    assert_eq!(
        run(Decode::Static, Some(0.8)),
        run(Decode::Eager, Some(0.8))
    );
}

#[test]
fn graph_decoding_off_a_gpu_is_an_error_that_says_so() {
    let model = load(&fixture_model());
    let config = GenerationConfig {
        max_new_tokens: 3,
        decode: gemma_lm::Decode::Graph,
        ..Default::default()
    };
    let err = generate(&model, &[vec![2i64, 17]], &config, |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("CUDA"), "{err}");
}

#[test]
fn recorded_attention_is_eager_attention_with_the_same_outputs() {
    let model = load(&fixture_model());
    let ids = sample_ids();
    let embeds = model.embed(&ids);
    let fused = model
        .forward_embeds(&embeds, None, None, false)
        .unwrap()
        .last_hidden_state;
    let (eager, attentions) = model.forward_with_attentions(&embeds, None, None).unwrap();
    let diff = (&eager.last_hidden_state - &fused)
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff < 1e-5, "{diff}");
    assert_eq!(attentions.len(), model.config().num_hidden_layers as usize);
    let (b, l) = (ids.size()[0], ids.size()[1]);
    for a in &attentions {
        assert_eq!(a.size(), [b, model.config().num_attention_heads, l, l]);
        let rows = a.sum_dim_intlist(-1, false, Kind::Float);
        assert!(rows.allclose(&rows.ones_like(), 1e-5, 1e-5, false));
        // Causal: nothing above the diagonal.
        let above = a.triu(1).abs().max().double_value(&[]);
        assert_eq!(above, 0.0);
    }
}

#[test]
fn quantized_weights_give_logits_close_to_the_dense_model() {
    use foundation::quant::Quantization;
    let dense = load(&fixture_model());
    let one = Tensor::from_slice(&[2i64]).view([1, 1]);
    let long = Tensor::arange_start(2, 22, (Kind::Int64, Device::Cpu)).view([1, 20]);
    // A random 64-wide model: int4's 16 levels per 32 weights move its logits far more than
    // they move a trained model's (the demo model's greedy agreement is in docs/benchmarks.md).
    // With VNNI the activations are rounded to 8 bits per block of 32 too, a prompt's as well
    // as a decoding step's (int8: 0.087 of the largest logit over the 20-token prompt, 0.069
    // with exact activations).
    for (how, tolerance) in [
        (Quantization::Int8, 0.1),
        (Quantization::Int4 { group: 32 }, 0.45),
    ] {
        let mut quantized = load(&fixture_model());
        assert_eq!(
            quantized.quantize(how).unwrap(),
            14,
            "7 linear layers in each of 2 layers"
        );
        // The dense weights are gone (the variable store let go of them too).
        for (name, linear) in quantized.linears() {
            assert_eq!(linear.weight.numel(), 0, "{name}");
        }
        // One token (decoding) and a prompt's rows both go through the quantized weights.
        for ids in [&one, &long] {
            let (a, b) = (logits_of(&dense, ids), logits_of(&quantized, ids));
            let scale = a.abs().max().double_value(&[]);
            let diff = (&a - &b).abs().max().double_value(&[]);
            assert!(
                diff < tolerance * scale,
                "{how}: {diff} against logits up to {scale}"
            );
        }
    }
}

#[test]
fn quantizing_while_loading_equals_quantizing_after() {
    use foundation::quant::{Loading, Quantization};
    let dir = fixture_model();
    let config = GemmaConfig::from_file(&dir).unwrap();
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let ids = Tensor::arange_start(2, 22, (Kind::Int64, Device::Cpu)).view([1, 20]);
    let one = Tensor::from_slice(&[2i64]).view([1, 1]);
    for how in [Quantization::Int8, Quantization::Int4 { group: 32 }] {
        let mut after = load(&dir);
        after.quantize(how).unwrap();
        let (_vs, during) = Gemma::from_checkpoint_as(
            &config,
            &checkpoint,
            Device::Cpu,
            Kind::Float,
            Loading::Quantize(how),
        )
        .unwrap();
        for (name, linear) in during.linears() {
            assert_eq!(
                linear.weight.numel(),
                0,
                "{how}: {name} kept its dense weight"
            );
        }
        for ids in [&one, &ids] {
            let (a, b) = (logits_of(&after, ids), logits_of(&during, ids));
            assert!(a.equal(&b), "{how}: logits differ");
        }
    }
    // A checkpoint that lacks a layer's weight is still named.
    let broken = tempfile::tempdir().unwrap();
    write_layout(
        broken.path(),
        &std::fs::read_to_string(dir.join("config.json")).unwrap(),
        |name| (!name.contains("layers.1.mlp.up_proj")).then(|| name.to_string()),
        1,
    );
    let checkpoint = Checkpoint::open(broken.path()).unwrap();
    let Err(err) = Gemma::from_checkpoint_as(
        &config,
        &checkpoint,
        Device::Cpu,
        Kind::Float,
        Loading::Quantize(Quantization::Int8),
    ) else {
        panic!("a missing weight is an error");
    };
    assert!(err.to_string().contains("up_proj"), "{err}");
}

#[test]
fn a_model_saved_quantized_loads_its_codes_as_they_were() {
    use foundation::quant::{Loading, Quantization};
    let dir = fixture_model();
    let config = GemmaConfig::from_file(&dir).unwrap();
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let ids = Tensor::arange_start(2, 22, (Kind::Int64, Device::Cpu)).view([1, 20]);
    let one = Tensor::from_slice(&[2i64]).view([1, 1]);
    for how in [Quantization::Int8, Quantization::Int4 { group: 32 }] {
        let (vs, quantized) = Gemma::from_checkpoint_as(
            &config,
            &checkpoint,
            Device::Cpu,
            Kind::Float,
            Loading::Quantize(how),
        )
        .unwrap();
        let saved = tempfile::tempdir().unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["quantization_config"] = how.to_config();
        std::fs::write(saved.path().join("config.json"), json.to_string()).unwrap();
        let tensors = quantized.tensors(&vs);
        save_safetensors(saved.path().join("model.safetensors"), &tensors, None).unwrap();
        // Codes in place of the dense linear weights and the tied embedding.
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"model.layers.1.mlp.up_proj.weight_codes"));
        assert!(names.contains(&"model.embed_tokens.weight_scales"));
        assert!(!names.contains(&"model.layers.1.mlp.up_proj.weight"));
        assert!(!names.contains(&"model.embed_tokens.weight"));
        assert_eq!(
            names.contains(&"model.layers.0.self_attn.q_proj.weight_mins"),
            how != Quantization::Int8
        );

        let (_vs, mut loaded) = Gemma::from_pretrained(saved.path(), Device::Cpu, Kind::Float)
            .unwrap_or_else(|e| panic!("{how}: {e}"));
        assert_eq!(loaded.quantization(), Some(how));
        for (name, linear) in loaded.linears() {
            assert_eq!(linear.weight.numel(), 0, "{how}: {name} has a dense weight");
        }
        for ids in [&one, &ids] {
            let (a, b) = (logits_of(&quantized, ids), logits_of(&loaded, ids));
            assert!(a.equal(&b), "{how}: logits differ");
        }
        // Quantizing it again in its own form leaves it; another form is refused.
        loaded.quantize(how).unwrap();
        assert!(logits_of(&loaded, &one).equal(&logits_of(&quantized, &one)));
        let other = match how {
            Quantization::Int8 => Quantization::Int4 { group: 32 },
            _ => Quantization::Int8,
        };
        let err = loaded.quantize(other).unwrap_err().to_string();
        assert!(err.contains(&how.to_string()), "{err}");

        // A file whose scales are not the form's dtype is named, as is a missing tensor.
        let broken = tempfile::tempdir().unwrap();
        std::fs::copy(
            saved.path().join("config.json"),
            broken.path().join("config.json"),
        )
        .unwrap();
        let damaged: Vec<(String, Tensor)> = tensors
            .iter()
            .filter(|(n, _)| n != "model.layers.0.mlp.down_proj.weight_codes")
            .map(|(n, t)| match n.as_str() {
                "model.layers.1.self_attn.k_proj.weight_scales" => {
                    (n.clone(), t.to_kind(Kind::Float))
                }
                _ => (n.clone(), t.shallow_clone()),
            })
            .collect();
        save_safetensors(broken.path().join("model.safetensors"), &damaged, None).unwrap();
        let err = Gemma::from_pretrained(broken.path(), Device::Cpu, Kind::Float)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.layers.0.mlp.down_proj.weight_codes"),
            "{err}"
        );
        let restored: Vec<(String, Tensor)> = damaged
            .into_iter()
            .chain(
                tensors
                    .iter()
                    .filter(|(n, _)| n == "model.layers.0.mlp.down_proj.weight_codes")
                    .map(|(n, t)| (n.clone(), t.shallow_clone())),
            )
            .collect();
        save_safetensors(broken.path().join("model.safetensors"), &restored, None).unwrap();
        let err = Gemma::from_pretrained(broken.path(), Device::Cpu, Kind::Float)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.layers.1.self_attn.k_proj.weight_scales") && err.contains("F32"),
            "{err}"
        );
    }
}
