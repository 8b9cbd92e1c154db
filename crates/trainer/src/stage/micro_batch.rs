//! One micro-batch's forward and backward pass: its tensors, its loss, its gradients added to
//! the parameters'.

use data::Batch;
use foundation::device::upload;
use llava_model::LlavaModel;
use tch::{Device, Tensor};

use super::StageError;

/// A micro-batch as the model takes it: token ids and labels on the host (the model counts image
/// tokens and finds labelled positions there, then uploads them, so the host never waits for the
/// device in the middle of a step), images uploaded to the device without waiting, and the
/// packing of a packed batch.
struct Inputs {
    ids: Tensor,
    labels: Tensor,
    pixels: Option<Tensor>,
    packing: Option<gemma_lm::Packing>,
}

impl Inputs {
    /// The tensors of `batch`, for a model on `device`.
    fn of(batch: &Batch, device: Device) -> Self {
        let shape = [batch.batch_size as i64, batch.seq_len as i64];
        let ids = Tensor::from_slice(&batch.input_ids).view(shape);
        let labels = Tensor::from_slice(&batch.labels).view(shape);
        let pixels = (batch.images > 0).then(|| upload(&pixel_values(batch), device));
        Inputs {
            ids,
            labels,
            pixels,
            packing: packing(batch, device),
        }
    }
}

/// The batch's images as one `[images, 3, h, w]` tensor on the host.
fn pixel_values(batch: &Batch) -> Tensor {
    let (h, w) = batch.image_size;
    Tensor::from_slice(&batch.pixel_values).view([batch.images as i64, 3, h as i64, w as i64])
}

/// The batch's packing, when it is packed: positions on `device`, segments on the host (the
/// attention plan reads their boundaries there).
fn packing(batch: &Batch, device: Device) -> Option<gemma_lm::Packing> {
    if batch.segment_ids.is_empty() {
        return None;
    }
    let shape = [batch.batch_size as i64, batch.seq_len as i64];
    let tensor = |v: &[i64]| Tensor::from_slice(v).view(shape);
    Some(gemma_lm::Packing {
        positions: upload(&tensor(&batch.position_ids), device),
        segments: tensor(&batch.segment_ids),
    })
}

/// Seeds libtorch's generator for micro-batch `micro` of the step after `step`. Adapter dropout
/// draws from it: seeding it per micro-batch makes a resumed run, and a rank taking this
/// micro-batch, draw what the uninterrupted one-process run drew.
pub(super) fn seed_dropout(seed: u64, step: usize, micro: usize) {
    tch::manual_seed(
        (seed.wrapping_mul(1_000_003) as i64) ^ (step as i64) ^ ((micro as i64) << 40),
    );
}

/// The forward and backward pass of `batch`: returns its loss (the mean over its labelled
/// tokens, detached) and adds the gradients of the loss divided by `divisor` to the parameters'.
/// With `checkpointed`, each decoder layer keeps only its input and is recomputed in backward.
pub(super) fn loss_backward(
    model: &LlavaModel,
    batch: &Batch,
    divisor: f64,
    checkpointed: bool,
) -> Result<Tensor, StageError> {
    let inputs = Inputs::of(batch, model.device());
    if checkpointed {
        return checkpointed_loss_backward(model, &inputs, divisor);
    }
    let hidden = model.forward_train(
        &inputs.ids,
        inputs.pixels.as_ref(),
        &inputs.labels,
        inputs.packing.as_ref(),
    )?;
    let (loss, _) = model.loss(&hidden, &inputs.labels)?;
    (&loss / divisor).backward();
    Ok(loss.detach())
}

/// [`loss_backward`] with activation checkpointing.
fn checkpointed_loss_backward(
    model: &LlavaModel,
    inputs: &Inputs,
    divisor: f64,
) -> Result<Tensor, StageError> {
    let (loss, _) = model.loss_backward_checkpointed_packed(
        &inputs.ids,
        inputs.pixels.as_ref(),
        &inputs.labels,
        divisor,
        inputs.packing.as_ref(),
    )?;
    Ok(loss)
}
