"""Server bootstrap: configuration, health, reflection (v1 and v1alpha)."""

from __future__ import annotations

import argparse
import asyncio
import gc

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from orion_grpc.api._reflection import reflection_v1_pb2 as v1_pb2
from orion_grpc.api.server import SERVICE_NAMES, ServerConfig, tune_gc

ORCHESTRATE = "orion.v1.OrchestratorService.OrchestrateOrion"


# ---------------------------------------------------------------------- configuration
def test_config_precedence_is_flags_then_environment_then_defaults():
    parser = argparse.ArgumentParser()
    ServerConfig.add_arguments(parser)
    args = parser.parse_args(["--port", "6000", "--grace", "1.5"])
    env = {"ORION_PORT": "7000", "ORION_HOST": "0.0.0.0", "ORION_LEASE_TTL": "12"}
    config = ServerConfig.from_sources(args, env)
    assert (config.port, config.host, config.grace, config.lease_ttl) == \
        (6000, "0.0.0.0", 1.5, 12.0)
    assert config.heartbeat_interval == ServerConfig().heartbeat_interval
    assert ServerConfig.from_sources(None, {}).address == "127.0.0.1:50051"
    assert ServerConfig(host="::1", port=5).address == "[::1]:5"


@pytest.mark.parametrize("env, message", [({"ORION_PORT": "http"}, "ORION_PORT='http'"),
                                          ({"ORION_PORT": "70000"}, "not in 0..65535"),
                                          ({"ORION_LEASE_TTL": "0"}, "lease_ttl")])
def test_bad_configuration_is_reported(env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ServerConfig.from_sources(None, env)


def test_grpc_options_carry_keepalive_and_message_limits():
    options = dict(ServerConfig(keepalive_time=7, max_receive_message_bytes=2048).grpc_options())
    assert options["grpc.keepalive_time_ms"] == 7000
    assert options["grpc.max_receive_message_length"] == 2048


# ---------------------------------------------------------------------- health
async def test_health_overall_and_per_service(server, channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ["", *SERVICE_NAMES]:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, name
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Check(health_pb2.HealthCheckRequest(service="nope.Service"), timeout=5)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


async def test_health_goes_not_serving_on_shutdown(make_server):
    server = await make_server()
    async with grpc.aio.insecure_channel(server.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        updates = aiter(watch)
        assert (await anext(updates)).status == health_pb2.HealthCheckResponse.SERVING
        await server.stop(0.2)
        assert (await anext(updates)).status == health_pb2.HealthCheckResponse.NOT_SERVING


# ---------------------------------------------------------------------- reflection
async def reflect(channel: grpc.aio.Channel, module, request):
    method = channel.stream_stream(
        f"/{module.DESCRIPTOR.package}.ServerReflection/ServerReflectionInfo",
        request_serializer=module.ServerReflectionRequest.SerializeToString,
        response_deserializer=module.ServerReflectionResponse.FromString)
    call = method(iter([request]), timeout=5)
    responses = [r async for r in call]
    assert len(responses) == 1
    return responses[0]


def file_names(response) -> list[str]:
    names = []
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto()
        proto.ParseFromString(raw)
        names.append(proto.name)
    return names


@pytest.mark.parametrize("module", [v1_pb2, v1alpha_pb2], ids=["v1", "v1alpha"])
async def test_reflection_lists_services_and_resolves_symbols(channel, module):
    listed = await reflect(channel, module, module.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert set(SERVICE_NAMES) <= names
    assert {"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    for symbol, expected in [
        (ORCHESTRATE, "orion/v1/orchestrator_service.proto"),      # a method (upb cannot)
        ("orion.v1.OrchestratorService", "orion/v1/orchestrator_service.proto"),
        ("orion.v1.TaskStar", "orion/v1/task_star.proto"),
        ("orion.v1.TaskStar.task_id", "orion/v1/task_star.proto"),
        ("orion.v1.TaskStatus", "orion/v1/task_star.proto"),
        ("orion.v1.TaskStatus.TASK_STATUS_RUNNING", "orion/v1/task_star.proto"),
        ("orion.v1.TASK_STATUS_RUNNING", "orion/v1/task_star.proto"),
    ]:
        response = await reflect(channel, module,
                                 module.ServerReflectionRequest(file_containing_symbol=symbol))
        assert not response.HasField("error_response"), symbol
        files = file_names(response)
        assert files[0] == expected, symbol
        if symbol == ORCHESTRATE:  # transitive imports come along
            assert {"orion/v1/orion.proto", "google/protobuf/struct.proto"} <= set(files)
    missing = await reflect(channel, module,
                            module.ServerReflectionRequest(file_containing_symbol="orion.v1.Nope"))
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    extension = await reflect(channel, module, module.ServerReflectionRequest(
        file_containing_extension=module.ExtensionRequest(containing_type="orion.v1.TaskStar",
                                                          extension_number=100)))
    assert extension.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    by_name = await reflect(channel, module, module.ServerReflectionRequest(
        file_by_filename="orion/v1/event.proto"))
    assert file_names(by_name)[0] == "orion/v1/event.proto"
    numbers = await reflect(channel, module, module.ServerReflectionRequest(
        all_extension_numbers_of_type="orion.v1.TaskStar"))
    assert numbers.all_extension_numbers_response.base_type_name == "orion.v1.TaskStar"


async def test_grpcio_reflection_client_describes_a_method(server):
    """grpcio's own (blocking, v1alpha) reflection client loads the method over the wire."""

    def describe() -> tuple[str, list[str]]:
        with grpc.insecure_channel(server.target) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            pool = descriptor_pool.DescriptorPool(database)
            method = pool.FindMethodByName(ORCHESTRATE)
            return method.input_type.full_name, list(database.get_services())

    input_type, services = await asyncio.wait_for(asyncio.to_thread(describe), 10)
    assert input_type == "orion.v1.OrchestrateOrionRequest"
    assert set(SERVICE_NAMES) <= set(services)


async def test_reflection_serves_the_proto_comments(channel):
    response = await reflect(channel, v1_pb2, v1_pb2.ServerReflectionRequest(
        file_containing_symbol=ORCHESTRATE))
    proto = descriptor_pb2.FileDescriptorProto.FromString(
        response.file_descriptor_response.file_descriptor_proto[0])
    comments = [loc.leading_comments for loc in proto.source_code_info.location]
    assert any("Validates, registers and runs an orion" in c for c in comments)


def test_a_stale_commented_descriptor_is_not_served(caplog):
    from orion_grpc.api.reflection import _Annotated
    from orion_grpc.gen.orion.v1 import task_star_pb2

    annotated = _Annotated()
    stale = annotated._files["orion/v1/task_star.proto"]
    stale.message_type[0].field.add(name="extra", number=999, type=9, label=1)
    served = descriptor_pb2.FileDescriptorProto.FromString(
        annotated.serialized(task_star_pb2.DESCRIPTOR))
    assert not served.HasField("source_code_info")
    assert "regenerate with scripts/gen_reflection_v1.py" in caplog.text


def test_serve_tunes_the_garbage_collector_for_a_long_running_process():
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (20_000, *before[1:])
        assert gc.get_freeze_count() > 0  # start-up objects are never scanned again
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
