"""Image inputs named on a command line (tools/predict.py, tools/infer.py, --calib folders).

A file is taken as given (whatever its suffix: the decoder says whether it is an image). A folder
stands for every image file below it, recursively (an ImageFolder's ``class/*.jpg`` layout is the
usual thing to point at), hidden files and folders skipped, sorted by path so every run lists
them in the same order. A path that is neither is one ``UserError`` with the same words in every
tool.
"""
import os

from errors import UserError


def image_extensions():
    from data.imagefolder import IMAGE_EXTENSIONS  # the one list of image suffixes

    return IMAGE_EXTENSIONS


def images_in(folder):
    """The image files below ``folder`` (recursively, hidden entries skipped), sorted."""
    suffixes = image_extensions()
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(parent, f) for f in files
                  if f.lower().endswith(suffixes) and not f.startswith(".")]
    return sorted(found)


def expand_images(paths):
    """``paths`` with every folder replaced by its image files; ``UserError`` for a path that is
    neither a file nor a folder, or a folder without images."""
    expanded = []
    for path in paths:
        if os.path.isdir(path):
            found = images_in(path)
            if not found:
                raise UserError("%s holds no image files (%s)"
                                % (path, " ".join(image_extensions())))
            expanded += found
        elif os.path.isfile(path):
            expanded.append(path)
        else:
            raise UserError("image not found: %s (no such file or folder)" % path)
    return expanded
