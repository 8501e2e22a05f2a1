"""Diffusion pipelines: module names as sd-scripts and diffusers write them, and loading outputs into pipelines."""
