"""Cluster token, TLS and mutual TLS on a real RoleServer; undecodable bytes."""

import datetime
import ipaddress

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from quartet.clients.channel import open_channel
from quartet.security import ClientSecurity, ServerSecurity
from quartet.serving import RoleServer
from quartet.v1 import common_pb2, reward_pb2, reward_pb2_grpc

TOKEN = "s3cret-token-for-tests"


class _Reward(reward_pb2_grpc.RewardServicer):
    def Score(self, request_iterator, context):
        for _ in request_iterator:
            yield reward_pb2.ScoreResponse(rewards=[1.0])

    def GetInfo(self, request, context):
        return common_pb2.ServiceInfo(role="reward")


def _serve(security: ServerSecurity) -> RoleServer:
    srv = RoleServer("reward", port=0, security=security)
    reward_pb2_grpc.add_RewardServicer_to_server(_Reward(), srv.grpc_server)
    srv.start()
    srv.set_serving(True)
    return srv


@pytest.fixture()
def token_server():
    srv = _serve(ServerSecurity(token=TOKEN))
    yield srv
    srv.stop(0)


def _calls(channel):
    stub = reward_pb2_grpc.RewardStub(channel)
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    return {
        "GetInfo": lambda: stub.GetInfo(common_pb2.GetInfoRequest(), timeout=5),
        "Score": lambda: list(stub.Score(iter([reward_pb2.ScoreRequest(queries=["q"])]),
                                         timeout=5)),
        "reflection": lambda: list(refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)),
    }


def _health(channel):
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                     timeout=5).status


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_every_rpc_but_health_needs_the_token(token_server, token):
    with open_channel(token_server.address, security=ClientSecurity(token=token)) as ch:
        for name, call in _calls(ch).items():
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
            assert "cluster token" in info.value.details()
            assert TOKEN not in info.value.details()
        assert _health(ch) == health_pb2.HealthCheckResponse.SERVING


def test_with_the_token_every_rpc_works(token_server):
    with open_channel(token_server.address, security=ClientSecurity(token=TOKEN)) as ch:
        for call in _calls(ch).values():
            call()


def test_token_file_from_the_environment(token_server, tmp_path, monkeypatch):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    monkeypatch.setenv("QUARTET_AUTH_TOKEN_FILE", str(path))
    with open_channel(token_server.address) as ch:
        assert _calls(ch)["GetInfo"]().role == "reward"
    assert TOKEN not in repr(ClientSecurity.from_env())


def test_undecodable_bytes_are_invalid_argument_not_internal(token_server, caplog):
    with open_channel(token_server.address, security=ClientSecurity(token=TOKEN)) as ch:
        raw = ch.unary_unary("/quartet.v1.Reward/GetInfo", request_serializer=None,
                             response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff\xff", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "do not decode as GetInfoRequest" in info.value.details()
    assert "Traceback" not in caplog.text


# ------------------------------------------------------------------------------- TLS
def _cert(name: str, issuer=None, issuer_key=None, ca: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.subject if issuer is not None else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert, key, pem, key_pem


@pytest.fixture(scope="module")
def pki():
    ca, ca_key, ca_pem, _ = _cert("quartet-test-ca", ca=True)
    _, _, server_pem, server_key = _cert("rollout", ca, ca_key)
    _, _, client_pem, client_key = _cert("coordinator", ca, ca_key)
    return {"ca": ca_pem, "server": (server_pem, server_key), "client": (client_pem, client_key)}


def test_tls_with_token(pki):
    srv = _serve(ServerSecurity(token=TOKEN, cert_chain=pki["server"][0],
                                private_key=pki["server"][1]))
    try:
        with open_channel(srv.address, security=ClientSecurity(token=TOKEN,
                                                               root_ca=pki["ca"])) as ch:
            assert _calls(ch)["GetInfo"]().role == "reward"
        with open_channel(srv.address, security=ClientSecurity(token=TOKEN)) as plain:
            with pytest.raises(grpc.RpcError) as info:
                _calls(plain)["GetInfo"]()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop(0)


def test_mutual_tls_requires_a_client_certificate(pki):
    srv = _serve(ServerSecurity(cert_chain=pki["server"][0], private_key=pki["server"][1],
                                client_ca=pki["ca"]))
    try:
        with open_channel(srv.address, security=ClientSecurity(
                root_ca=pki["ca"], cert_chain=pki["client"][0],
                private_key=pki["client"][1])) as ch:
            assert _calls(ch)["GetInfo"]().role == "reward"
        with open_channel(srv.address, security=ClientSecurity(root_ca=pki["ca"])) as no_cert:
            with pytest.raises(grpc.RpcError) as info:
                _calls(no_cert)["GetInfo"]()
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop(0)
