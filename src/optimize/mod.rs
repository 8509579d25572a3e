//! Making trained models smaller and faster for the device: pruning (magnitude and
//! structured, one-shot or gradual with fine-tuning).

pub mod finetune;
pub mod prune;
