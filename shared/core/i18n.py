"""Localized messages (en, es) for every error and rejection code.

Two locales and a few dozen strings: a dictionary is clearer than a gettext
catalogue build step. Lookups fall back to English, then to the key itself.
"""

from __future__ import annotations

SUPPORTED_LOCALES = ("en", "es")
DEFAULT_LOCALE = "en"

MESSAGES: dict[str, dict[str, str]] = {
    "auth.missing_token": {
        "en": "Sign in to continue.",
        "es": "Inicia sesión para continuar.",
    },
    "auth.invalid_token": {
        "en": "Your session is not valid. Please sign in again.",
        "es": "Tu sesión no es válida. Vuelve a iniciar sesión.",
    },
    "auth.expired_token": {
        "en": "Your session has expired. Please sign in again.",
        "es": "Tu sesión ha caducado. Vuelve a iniciar sesión.",
    },
    "request.invalid": {
        "en": "Some fields of the request are missing or not valid.",
        "es": "Faltan campos de la solicitud o no son válidos.",
    },
    "request.too_large": {
        "en": "This request is too large.",
        "es": "Esta solicitud es demasiado grande.",
    },
    "request.not_found": {
        "en": "This address does not exist.",
        "es": "Esta dirección no existe.",
    },
    "request.method_not_allowed": {
        "en": "This method is not allowed here.",
        "es": "Este método no está permitido aquí.",
    },
    "request.uri_too_long": {
        "en": "This address is too long.",
        "es": "Esta dirección es demasiado larga.",
    },
    "request.headers_too_large": {
        "en": "The headers of this request are too large.",
        "es": "Las cabeceras de esta solicitud son demasiado grandes.",
    },
    "upload.not_found": {
        "en": "We could not find this upload.",
        "es": "No encontramos esta subida.",
    },
    "upload.object_missing": {
        "en": "Your photo has not arrived yet. Finish the upload and try again.",
        "es": "Tu foto aún no ha llegado. Termina la subida e inténtalo de nuevo.",
    },
    "upload.forbidden_key": {
        "en": "This upload does not belong to you.",
        "es": "Esta subida no te pertenece.",
    },
    "upload.already_confirmed": {
        "en": "This upload was already confirmed.",
        "es": "Esta subida ya fue confirmada.",
    },
    "upload.expired": {
        "en": "This upload has expired. Please take a new photo.",
        "es": "Esta subida ha caducado. Toma una foto nueva.",
    },
    "upload.too_large": {
        "en": "The photo is too large. The limit is 16 MB.",
        "es": "La foto es demasiado grande. El límite es de 16 MB.",
    },
    "upload.unsupported_type": {
        "en": "This file type is not supported. Use JPEG, PNG, WebP or HEIC.",
        "es": "Este tipo de archivo no es compatible. Usa JPEG, PNG, WebP o HEIC.",
    },
    "upload.size_mismatch": {
        "en": "The uploaded file's size differs from the one announced. Please upload again.",
        "es": "El tamaño del archivo subido no coincide con el anunciado. Vuelve a subirlo.",
    },
    "upload.type_mismatch": {
        "en": "The file is not the type of image it claims to be.",
        "es": "El archivo no es el tipo de imagen que dice ser.",
    },
    "upload.checksum_mismatch": {
        "en": "The photo was damaged during upload. Please upload it again.",
        "es": "La foto se dañó durante la subida. Vuelve a subirla.",
    },
    "upload.undecodable": {
        "en": "We could not read this image. It may be damaged or incomplete.",
        "es": "No pudimos leer esta imagen. Puede estar dañada o incompleta.",
    },
    "upload.too_many_pixels": {
        "en": "The image dimensions are too large. Please use a smaller photo.",
        "es": "Las dimensiones de la imagen son demasiado grandes. Usa una foto más pequeña.",
    },
    "upload.no_face": {
        "en": "We could not find a face in this photo. Take a selfie facing the camera.",
        "es": "No encontramos una cara en esta foto. Hazte un selfi mirando a la cámara.",
    },
    "upload.multiple_faces": {
        "en": "This photo shows more than one face. Take a selfie of just yourself.",
        "es": "Esta foto muestra más de una cara. Hazte un selfi solo de ti.",
    },
    "upload.malware": {
        "en": "This file was blocked by our security scan.",
        "es": "Nuestro análisis de seguridad bloqueó este archivo.",
    },
    "upload.nsfw": {
        "en": "This photo is not allowed. Please use a different selfie.",
        "es": "Esta foto no está permitida. Usa otro selfi.",
    },
    "upload.validation_failed": {
        "en": "We could not check this photo. Please upload it again.",
        "es": "No pudimos revisar esta foto. Vuelve a subirla.",
    },
    "upload.not_ready": {
        "en": "Your photo is still being checked. Please try again in a moment.",
        "es": "Todavía estamos revisando tu foto. Inténtalo de nuevo en un momento.",
    },
    "upload.rejected": {
        "en": "This photo cannot be used. Please upload a different selfie.",
        "es": "Esta foto no se puede usar. Sube otro selfi.",
    },
    "tryon.not_found": {
        "en": "We could not find this try-on.",
        "es": "No encontramos esta prueba de peinado.",
    },
    "tryon.unknown_hairstyle": {
        "en": "This hairstyle is not available.",
        "es": "Este peinado no está disponible.",
    },
    "tryon.no_result": {
        "en": "This try-on has no result to keep.",
        "es": "Esta prueba de peinado no tiene un resultado que guardar.",
    },
    "tryon.hairstyle_retired": {
        "en": "This hairstyle is no longer available. Please choose another one.",
        "es": "Este peinado ya no está disponible. Elige otro.",
    },
    "erasure.not_found": {
        "en": "You have not asked us to delete your data.",
        "es": "No nos has pedido que borremos tus datos.",
    },
    "user.erasure_in_progress": {
        "en": "We are deleting your data. Please try again when that has finished.",
        "es": "Estamos borrando tus datos. Inténtalo de nuevo cuando termine.",
    },
    "idempotency.conflict": {
        "en": "This request key was already used for a different request.",
        "es": "Esta clave de solicitud ya se usó para otra solicitud.",
    },
    "idempotency.in_progress": {
        "en": "The same request is still being processed. Try again in a moment.",
        "es": "La misma solicitud aún se está procesando. Inténtalo de nuevo en un momento.",
    },
    "webhook.invalid": {
        "en": "The callback could not be verified.",
        "es": "No se pudo verificar la llamada de retorno.",
    },
    "fal.timeout": {
        "en": "Creating your new look took too long. Please try again.",
        "es": "Crear tu nuevo look tardó demasiado. Inténtalo de nuevo.",
    },
    "fal.content_policy": {
        "en": "This photo or request was blocked by the content policy. Try another selfie or style.",
        "es": "La política de contenido bloqueó esta foto o solicitud. Prueba con otro selfi o estilo.",
    },
    "fal.rejected": {
        "en": "We could not create a look from this photo. Try another selfie.",
        "es": "No pudimos crear un look con esta foto. Prueba con otro selfi.",
    },
    "fal.no_result": {
        "en": "No image was produced this time. Please try again.",
        "es": "Esta vez no se generó ninguna imagen. Inténtalo de nuevo.",
    },
    "fal.input_unreachable": {
        "en": "Your photo could not be delivered for processing. Please try again.",
        "es": "No pudimos enviar tu foto para procesarla. Inténtalo de nuevo.",
    },
    "fal.unavailable": {
        "en": "The styling service is busy right now. Please try again shortly.",
        "es": "El servicio de peinados está ocupado ahora. Inténtalo de nuevo en breve.",
    },
    "fal.rate_limited": {
        "en": "The styling service is busy right now. Please try again shortly.",
        "es": "El servicio de peinados está ocupado ahora. Inténtalo de nuevo en breve.",
    },
    "fal.unauthorized": {
        "en": "The styling service is temporarily unavailable. Please try again later.",
        "es": "El servicio de peinados no está disponible por ahora. Inténtalo más tarde.",
    },
    "fal.bad_response": {
        "en": "The styling service answered unexpectedly. Please try again.",
        "es": "El servicio de peinados respondió de forma inesperada. Inténtalo de nuevo.",
    },
    "fal.bad_result": {
        "en": "The new look could not be saved. Please try again.",
        "es": "No se pudo guardar el nuevo look. Inténtalo de nuevo.",
    },
    "quota.exceeded": {
        "en": "You have reached today's limit. Try again later.",
        "es": "Has alcanzado el límite de hoy. Inténtalo más tarde.",
    },
    "rate.limited": {
        "en": "Too many requests. Please slow down and try again in a moment.",
        "es": "Demasiadas solicitudes. Espera un momento e inténtalo de nuevo.",
    },
    "service.unavailable": {
        "en": "The service is temporarily unavailable. Please try again shortly.",
        "es": "El servicio no está disponible por ahora. Inténtalo de nuevo en breve.",
    },
    "internal.error": {
        "en": "Something went wrong on our side. Please try again.",
        "es": "Algo salió mal de nuestro lado. Inténtalo de nuevo.",
    },
}


def message_key(code: str) -> str:
    """The key the app can use for its own translations."""
    return f"errors.{code}"


def translate(code: str, locale: str | None) -> str:
    texts = MESSAGES.get(code)
    if texts is None:
        return code
    return texts.get(normalize_locale(locale) or DEFAULT_LOCALE) or texts[DEFAULT_LOCALE]


def normalize_locale(locale: str | None) -> str | None:
    """`es-MX` -> `es`; unknown locales -> None."""
    if not locale:
        return None
    base = locale.strip().replace("_", "-").split("-")[0].lower()
    return base if base in SUPPORTED_LOCALES else None
