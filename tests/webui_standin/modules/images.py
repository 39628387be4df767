"""Stand-in: the image helpers of WebUI 1.10's modules/images.py that a script uses, with their signatures.

save_image records its calls in `saved` instead of writing files; resize_image does a plain resize whatever the
mode (the WebUI crops or fills for modes 1 and 2); flatten composes transparency over a colour as the WebUI does.
"""

from PIL import Image

saved = []  # one dict of save_image's arguments per call


def save_image(image, path, basename, seed=None, prompt=None, extension="png", info=None, short_filename=False,
               no_prompt=False, grid=False, pnginfo_section_name="parameters", p=None, existing_info=None,
               forced_filename=None, suffix="", save_to_dirs=None):
    saved.append(dict(image=image, path=path, basename=basename, seed=seed, prompt=prompt, extension=extension,
                      info=info, p=p))
    fullfn = f"{path}/{len(saved):05}-{seed}.{extension}"
    image.already_saved_as = fullfn  # the WebUI marks the image, so its gallery serves the saved file
    return fullfn, None


def resize_image(resize_mode, im, width, height, upscaler_name=None):
    resized.append(resize_mode)
    return im if im.size == (width, height) else im.resize((width, height))


resized = []  # the resize_mode of each resize_image call


def flatten(img, bgcolor):
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, bgcolor)
        background.paste(img, mask=img)
        img = background
    return img.convert("RGB")
