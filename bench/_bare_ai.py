"""The ai benchmark's baseline: a bare grpc.aio AnalysisService that makes the one call.

    python bench/_bare_ai.py        (ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL set)

AnalyzeText sends the request the ai service sends (same SDK, transport, model, prompt
and schema) and answers with the parsed JSON. Nothing else: no token check, session,
quota, slot, cache or database. What the ai service takes beyond this process is its
overhead. It logs servicekit.server's SERVING line, so the bench waits for it as for
the service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import grpc
from anthropic.types import Message

from ai_service.domain import Sentiment
from ai_service.prompt import OUTPUT_SCHEMA, SYSTEM_PROMPT, user_message
from ai_service.servicer import SENTIMENT_TO_PROTO
from servicekit.server import SERVING
from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc

MODEL = os.environ.get("AI_MODELS", "claude-bench").split(",")[0]


class BareAnalysis(analysis_pb2_grpc.AnalysisServiceServicer):
    def __init__(self, client: anthropic.AsyncAnthropic) -> None:
        self._client = client

    async def AnalyzeText(  # noqa: N802
        self, request: analysis_pb2.AnalyzeTextRequest, context: Any
    ) -> analysis_pb2.Analysis:
        message: Message = await self._client.messages.create(
            model=MODEL,
            max_tokens=1024,
            system=[
                {"type": "text", "text": SYSTEM_PROMPT, "cache_control": {"type": "ephemeral"}}
            ],
            messages=[{"role": "user", "content": user_message(request.text)}],
            output_config={"format": {"type": "json_schema", "schema": OUTPUT_SCHEMA}},
        )
        text = "".join(block.text for block in message.content if block.type == "text")
        output = json.loads(text)
        return analysis_pb2.Analysis(
            id=str(uuid.uuid4()),
            user_id=request.user_id,
            summary=output["summary"],
            sentiment=SENTIMENT_TO_PROTO[Sentiment(output["sentiment"])],
            key_points=output["key_points"],
            confidence=output["confidence"],
            model=message.model,
        )

    # The bench calls only AnalyzeText.
    async def StreamAnalyzeText(  # noqa: N802
        self, request: Any, context: Any
    ) -> AsyncIterator[analysis_pb2.AnalyzeTextResponseChunk]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the baseline")
        yield analysis_pb2.AnalyzeTextResponseChunk()

    async def GetAnalysis(self, request: Any, context: Any) -> Any:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the baseline")

    async def ListAnalyses(self, request: Any, context: Any) -> Any:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the baseline")

    async def BatchAnalyzeTexts(self, request: Any, context: Any) -> Any:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the baseline")


async def main() -> None:
    client = anthropic.AsyncAnthropic(max_retries=0, http_client=anthropic.DefaultAioHttpClient())
    server = grpc.aio.server()
    analysis_pb2_grpc.add_AnalysisServiceServicer_to_server(BareAnalysis(client), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    logging.info(SERVING, "bare AnalysisService", f"127.0.0.1:{port}")
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)
    await client.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    asyncio.run(main())
