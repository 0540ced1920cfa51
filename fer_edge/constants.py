"""Facts about FER2013 shared by every part of fer_edge."""

#: FER2013 class names in label order 0..6.
CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: Side of a FER2013 face image in pixels.
FER_IMAGE_SIZE = 48

#: The three FER2013 usages under the names fer_edge gives them.
SPLITS = ("train", "public", "private")

#: FER2013's CSV "Usage" values and image-file prefixes, mapped to split names.
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "public", "PrivateTest": "private"}
