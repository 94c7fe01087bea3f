"""The predictor: load an experiment, the blend or a bundle (`load`), predict images with the blend's own
pipeline (`predictor`), the bundle format (`bundle`), and the training images most similar to an
image (`similar`).
"""
