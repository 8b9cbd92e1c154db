//! Relevancy and attention maps equal a reference made with transformers (eager attention,
//! `output_attentions`, autograd) and the rule in Python (scripts/make_explain_fixture.py), on
//! the LLaVA, Gemma 3 and PaliGemma parity models.

use std::path::PathBuf;

use llava_model::LlavaModel;
use tch::{Device, Kind, Tensor};

fn explain_fixture(name: &str) -> PathBuf {
    foundation::parity_fixtures().join("../explain").join(name)
}

fn ids(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.flatten(0, -1)).unwrap()
}

fn check(name: &str) {
    let dir = explain_fixture(name);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let model = LlavaModel::from_pretrained(
        dir.join(meta["model"].as_str().unwrap()),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let inputs = foundation::checkpoint::read_all(dir.join("inputs.safetensors")).unwrap();
    let expected = foundation::checkpoint::read_all(dir.join("expected.safetensors")).unwrap();
    let prompt = ids(&inputs["prompt_ids"]);
    let answer = ids(&inputs["answer"]);
    let explained = model
        .explain(&prompt, Some(&inputs["pixel_values"]), &answer)
        .unwrap();
    assert_eq!(explained.sequence, ids(&inputs["sequence"]), "{name}");
    let atol = meta["atol"].as_f64().unwrap();
    for (what, ours) in [
        ("relevancy", &explained.relevancy),
        ("attention", &explained.attention),
    ] {
        let theirs = &expected[what];
        assert_eq!(ours.size(), theirs.size(), "{name} {what}");
        let diff = (ours - theirs).abs().max().double_value(&[]);
        eprintln!("{name} {what}: max |diff| {diff:.3e}");
        assert!(diff <= atol, "{name} {what}: max |diff| {diff}");
    }
    // The image's maps are square grids; shares are fractions.
    let image_token = meta["image_token_id"].as_i64().unwrap();
    let maps = explained
        .image_maps(&explained.relevancy, image_token)
        .unwrap();
    assert_eq!(maps.len(), 1, "{name}: one image");
    let side = maps[0].size()[1];
    assert_eq!(maps[0].size(), [answer.len() as i64, side, side]);
    for share in explained.image_share(image_token) {
        assert!((0.0..=1.0).contains(&share), "{name}: {share}");
    }
}

#[test]
fn llava_maps_equal_transformers_eager_attention_and_autograd() {
    check("llava-clip");
}

#[test]
fn gemma3_maps_equal_transformers_with_image_blocks() {
    check("gemma3");
}

#[test]
fn paligemma_maps_equal_transformers_with_the_prefix_block() {
    check("paligemma");
}
