"""The inference server's OpenAPI 3.1 document (`GET /openapi.json`).

It describes what the server accepts and answers, exactly: once the model is loaded, each
instance's columns with the types the model's input check takes (the predictor's
`input_schema()`, e.g. numbers as JSON numbers, flags as JSON booleans) and the predictions
with the model's classes. The API probe (tests/test_serve_api.py) holds the server to it.
"""

from __future__ import annotations

from typing import Any

MAX_BODY_MB = 6


def instance_schema(predictor: Any) -> dict[str, Any]:
    """One instance: the predictor's own schema, else its column names, else any object."""
    if hasattr(predictor, "input_schema"):
        return predictor.input_schema()
    columns = list(getattr(predictor, "feature_columns", []) or [])
    schema: dict[str, Any] = {
        "type": "object",
        "description": "raw feature values as in the training file, without the target",
        "additionalProperties": False,
    }
    if columns:
        schema["properties"] = {c: {} for c in columns}
        schema["required"] = columns
    return schema


def prediction_schema(predictor: Any) -> dict[str, Any]:
    """One prediction: a number (regression) or the label and a probability per class."""
    task, classes = getattr(predictor, "task", None), getattr(predictor, "classes", None)
    if task == "regression":
        return {"type": "number", "description": "the predicted value"}
    if classes:
        keys = [str(c) for c in classes]
        return {
            "type": "object",
            "required": ["label", "probabilities"],
            "additionalProperties": False,
            "properties": {
                "label": {"enum": list(classes), "description": "the most probable class"},
                "probabilities": {
                    "type": "object",
                    "required": keys,
                    "additionalProperties": False,
                    "properties": {k: {"type": "number", "minimum": 0, "maximum": 1} for k in keys},
                },
            },
        }
    return {
        "oneOf": [
            {"type": "number", "description": "regression"},
            {
                "type": "object",
                "description": "classification",
                "required": ["label", "probabilities"],
                "properties": {
                    "label": {},
                    "probabilities": {
                        "type": "object",
                        "additionalProperties": {"type": "number"},
                    },
                },
            },
        ]
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/Error"}, description)


def openapi(predictor: Any = None) -> dict[str, Any]:
    """The document; before the model is loaded, instances and predictions are generic."""
    columns = list(getattr(predictor, "feature_columns", []) or [])
    csv_text = (
        "header-less CSV rows, one per instance, values in this column order: "
        + ", ".join(columns)
        + ". Numbers as decimal text, flags as true/false/1/0/yes/no, an empty field is missing."
    )
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "mlinfra inference server", "version": "1.0.0"},
        "paths": {
            "/ping": {
                "get": {
                    "summary": "Health check (SageMaker hosting contract)",
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Ping"}, "model loaded"),
                        "500": _error("the model failed to load"),
                        "503": _error("loading, or draining before a stop"),
                    },
                }
            },
            "/invocations": {
                "post": {
                    "summary": "Predict",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["instances"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "instances": {
                                            "type": "array",
                                            "minItems": 1,
                                            "items": instance_schema(predictor),
                                        }
                                    },
                                }
                            },
                            "text/csv": {"schema": {"type": "string", "description": csv_text}},
                        },
                    },
                    "responses": {
                        "200": _json(
                            {"$ref": "#/components/schemas/Predictions"},
                            "one prediction per instance, in order",
                        ),
                        "400": _error(
                            "bad input: the message names the instance, column and value "
                            "(also an input so far outside the training data that the "
                            "model's output overflows)"
                        ),
                        "406": _error("unsupported Accept: the server answers application/json"),
                        "413": _error(f"body over {MAX_BODY_MB} MB"),
                        "415": _error("unsupported Content-Type"),
                        "500": _error("a fault of the model (logged); never a made-up answer"),
                        "503": _error("model not loaded yet"),
                    },
                }
            },
            "/openapi.json": {
                "get": {"responses": {"200": _json({"type": "object"}, "this document")}}
            },
            "/stats": {
                "get": {
                    "responses": {
                        "200": _json(
                            {"type": "object"}, "batching counters of the worker that answers"
                        )
                    }
                }
            },
            "/execution-parameters": {
                "get": {
                    "responses": {
                        "200": _json(
                            {"$ref": "#/components/schemas/ExecutionParameters"},
                            "what SageMaker batch transform asks for",
                        )
                    }
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                "Ping": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"const": "ok"}},
                },
                "Predictions": {
                    "type": "object",
                    "required": ["predictions"],
                    "additionalProperties": False,
                    "properties": {
                        "predictions": {
                            "type": "array",
                            "minItems": 1,
                            "items": prediction_schema(predictor),
                        }
                    },
                },
                "ExecutionParameters": {
                    "type": "object",
                    "required": ["MaxConcurrentTransforms", "BatchStrategy", "MaxPayloadInMB"],
                    "properties": {
                        "MaxConcurrentTransforms": {"type": "integer", "minimum": 1},
                        "BatchStrategy": {"enum": ["MULTI_RECORD", "SINGLE_RECORD"]},
                        "MaxPayloadInMB": {"type": "integer", "minimum": 1},
                    },
                },
            }
        },
    }
    if hasattr(predictor, "openapi_content"):  # a task that describes its own input (image, text)
        doc["paths"]["/invocations"]["post"]["requestBody"]["content"] = predictor.openapi_content()
    return doc
