//! Offline conversion (std): rewrite a model's weights as f16 safetensors.
