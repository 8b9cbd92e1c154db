//! Activation checkpointing computes the gradients of the plain path: every trainable tensor's
//! (language model, connector and LoRA adapters alike) within float tolerance, and the same loss.

use std::collections::BTreeMap;

use llava_model::LlavaModel;
use tch::{Device, Kind, Tensor};

fn grads(model: &LlavaModel) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for (part, vs) in [
        ("lm", Some(&model.lm_vs)),
        ("connector", Some(&model.connector_vs)),
        ("lora", model.lora_vs.as_ref()),
    ] {
        for (name, t) in vs.map(|v| v.variables()).unwrap_or_default() {
            let g = t.grad();
            if g.defined() {
                out.insert(format!("{part}.{name}"), g.copy());
                let _ = g.shallow_clone().zero_();
            }
        }
    }
    out
}

#[test]
fn checkpointed_gradients_equal_the_plain_ones() {
    let fixtures = foundation::parity_fixtures();
    let mut model =
        LlavaModel::from_pretrained(fixtures.join("llava-clip/model"), Device::Cpu, Kind::Float)
            .unwrap();
    // Adapters with non-zero B (PEFT's fixture), so their gradients and their path both count.
    model
        .load_adapter(fixtures.join("../peft-lora/adapter"))
        .unwrap();
    let i =
        foundation::checkpoint::read_all(fixtures.join("llava-clip/inputs.safetensors")).unwrap();
    let (ids, pixels, labels) = (&i["input_ids"], &i["pixel_values"], &i["labels"]);

    let hidden = model.forward(ids, Some(pixels), None).unwrap();
    let (plain_loss, plain_count) = model.loss(&hidden, labels).unwrap();
    (&plain_loss / 2.0).backward();
    let plain = grads(&model);

    let (loss, count) = model
        .loss_backward_checkpointed(ids, Some(pixels), labels, 2.0)
        .unwrap();
    let checkpointed = grads(&model);

    assert_eq!(count, plain_count);
    assert!(loss.allclose(&plain_loss, 1e-6, 1e-6, false));
    assert_eq!(
        plain.keys().collect::<Vec<_>>(),
        checkpointed.keys().collect::<Vec<_>>()
    );
    assert!(plain.keys().any(|k| k.starts_with("lora.")));
    assert!(plain.keys().any(|k| k.starts_with("connector.")));
    assert!(plain.contains_key("lm.model.embed_tokens.weight"));
    for (name, g) in &plain {
        let c = &checkpointed[name];
        let scale = g.abs().max().double_value(&[]).max(1e-12);
        let diff = (g - c).abs().max().double_value(&[]);
        assert!(diff <= 1e-5 * scale, "{name}: {diff} against {scale}");
    }
}
