"""Sample dict keys, named once: datasets, transforms, collate and tasks import them, never guess."""

IMAGE = "image"
LABEL = "label"
MASK = "mask"  # MIL batches: (B, N) bool, True where an instance is real (not padding)
IMAGE_ID = "image_id"
SLIDE_ID = "slide_id"
X = "x"
Y = "y"
LEVEL = "level"
PATIENT_ID = "patient_id"
EXAM_ID = "exam_id"
LATERALITY = "laterality"
VIEW = "view"
CROPS = "crops"  # multi-crop SSL views: a list of (B, C, h, w) tensors, global crops first
FEATURES = "features"  # MIL: a slide's bag of tile features (N, D); batched (B, N, D) with MASK
COORDS = "coords"  # level-0 (x, y) of each bag instance's tile, (N, 2) int64
ERROR = "error"  # slide inference batches: why the loader could not read these tiles (the slide is reported failed)
