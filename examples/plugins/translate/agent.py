"""`/translate LANG TEXT`: the model answers with the translation of TEXT, and only that.

A request-side plugin: it puts a translator's system prompt in front of the text and pins the
temperature; the model's answer comes back as it is.
"""

from __future__ import annotations

from pydantic import BaseModel

from ollama_smart_proxy.agents import Agent, NativeRequest, Reply, SlashCall, set_system

LANGUAGES = {
    "de": "German",
    "en": "English",
    "es": "Spanish",
    "fr": "French",
    "it": "Italian",
    "ja": "Japanese",
    "nl": "Dutch",
    "pt": "Portuguese",
    "zh": "Chinese",
}


class Options(BaseModel):
    temperature: float = 0.0
    languages: dict[str, str] = LANGUAGES


class Translate(Agent):
    name = "translate"
    summary = "Translate text into another language"
    usage = "/translate LANG TEXT   (LANG: fr, de, es, ... or a language name)"
    priority = 50
    arity = 1
    Options = Options

    async def on_request(self, request: NativeRequest, call: SlashCall | None) -> Reply | None:
        if call is None or call.replay:
            return None
        if not call.args or not call.prompt:
            return Reply(f"Usage: {self.usage}")
        code = call.args[0]
        language = self.options.languages.get(code.lower(), code)
        set_system(
            request,
            f"You are a translator. Translate the user's text into {language}. "
            "Reply with the translation only: no notes, no quotes, no explanations.",
        )
        request.options = {**(request.options or {}), "temperature": self.options.temperature}
        return None
