"""Deployment: exporting a deploy-form model (``export``: ``.mge`` via ``dump``, ``.onnx`` via
``onnx_export``), running exported files (``runtime``, ``lite``) and preparing their input
(``preprocess``). Only ``export`` imports ``model`` (lazily); the inference side never does."""
