"""Evaluation of generated images and texts against worlds whose ground truth is known.

* `recipes.eval.detector`: an analytic Shapes World detector and GenEval-style prompt-adherence scoring

      from recipes.data.shapes import parse_caption
      from recipes.eval.detector import detect, score
      result = score(parse_caption(prompt), detect(image))   # {colour, shape, position, size, count, overall}

* `recipes.eval.digits_classifier`: a judge for generated digits (`recipes.data.digits`)

Submodules are imported on demand (nothing here), so one judge never pulls in the other's dependencies.
"""
