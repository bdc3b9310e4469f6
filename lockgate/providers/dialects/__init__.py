"""Client dialects lockgate accepts besides OpenAI's, Responses and Anthropic's Messages:
Google's Gemini API (`google-genai`), Cohere's v2 API and AWS Bedrock Runtime (boto3's
`bedrock-runtime`). Each module turns its dialect's request into an OpenAI request
(chat, embeddings, rerank, a Messages count), and OpenAI's answer, stream and error back
into the dialect's own shapes: pure dict -> dict functions, as the provider translators
are, in the opposite direction. proxy/ingress.py applies them at the edge of the gateway,
so every middleware sees an ordinary chat request.
"""
