"""LoRA whose update is masked by the base layer's N:M pattern, built on peft's custom-module API."""
