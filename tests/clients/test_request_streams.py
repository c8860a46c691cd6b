"""Request streams of one message go out as unary calls of the same method; longer ones
still stream, and the server sees the same messages either way."""

import threading

import grpc
import pytest

from quartet.clients.request_streams import RequestStreamMethod, unary_when_single
from quartet.serving import InvalidArgument, RoleServer
from quartet.v1 import critic_pb2, critic_pb2_grpc, reward_pb2, reward_pb2_grpc


class _Reward(reward_pb2_grpc.RewardServicer):
    """Score answers each request message with one reward per response; records them."""

    def __init__(self) -> None:
        self.received: list[list[int]] = []

    def Score(self, request_iterator, context):
        offsets = []
        for req in request_iterator:
            offsets.append(req.row_offset)
            yield reward_pb2.ScoreResponse(row_offset=req.row_offset,
                                           rewards=[float(len(r)) for r in req.responses])
        self.received.append(offsets)


class _Critic(critic_pb2_grpc.CriticServicer):
    """TrainStep counts the request messages; refuses a stream with none."""

    def TrainStep(self, request_iterator, context):
        n = sum(1 for _ in request_iterator)
        if n == 0:
            raise InvalidArgument("CriticTrainStepRequest: empty request stream")
        return critic_pb2.CriticTrainStepResponse(metrics=[{"name": "messages", "value": n}])


class _Kinds(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
             grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Records the shape of each call as the channel sends it."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    def intercept_unary_unary(self, continuation, details, request):
        self.kinds.append("unary_unary")
        return continuation(details, request)

    def intercept_unary_stream(self, continuation, details, request):
        self.kinds.append("unary_stream")
        return continuation(details, request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        self.kinds.append("stream_unary")
        return continuation(details, request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        self.kinds.append("stream_stream")
        return continuation(details, request_iterator)


@pytest.fixture()
def served():
    reward, server = _Reward(), RoleServer("reward", port=0)
    reward_pb2_grpc.add_RewardServicer_to_server(reward, server.grpc_server)
    critic_pb2_grpc.add_CriticServicer_to_server(_Critic(), server.grpc_server)
    server.start()
    server.set_serving(True)
    kinds = _Kinds()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), kinds)
    yield reward, kinds, channel, server.address
    channel.close()
    server.stop(0)


def _score(offset: int, n: int) -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(row_offset=offset, responses=["ab"] * n)


def test_a_one_message_stream_is_sent_unary_and_answered_alike(served):
    reward, kinds, channel, _address = served
    stub = unary_when_single(reward_pb2_grpc.RewardStub(channel), channel,
                             reward_pb2.DESCRIPTOR.services_by_name["Reward"])
    one = list(stub.Score((r for r in [_score(0, 3)]), timeout=10))
    assert kinds.kinds == ["unary_stream"]
    assert [list(r.rewards) for r in one] == [[2.0, 2.0, 2.0]]
    several = list(stub.Score(iter([_score(0, 2), _score(2, 1), _score(3, 1)]), timeout=10))
    assert kinds.kinds == ["unary_stream", "stream_stream"]
    assert [r.row_offset for r in several] == [0, 2, 3]
    assert reward.received == [[0], [0, 2, 3]]
    # the other methods are the generated stub's own
    assert isinstance(stub.Score, RequestStreamMethod)
    assert not isinstance(stub.GetInfo, RequestStreamMethod)


def test_client_streaming_unary_response_and_the_empty_stream(served):
    _reward, kinds, channel, _address = served
    stub = unary_when_single(critic_pb2_grpc.CriticStub(channel), channel,
                             critic_pb2.DESCRIPTOR.services_by_name["Critic"])
    req = critic_pb2.CriticTrainStepRequest(total_rows=1)
    assert stub.TrainStep([req], timeout=10).metrics[0].value == 1
    assert stub.TrainStep(iter([req, req]), timeout=10).metrics[0].value == 2
    with pytest.raises(grpc.RpcError) as err:  # nothing to send: still a (empty) stream
        stub.TrainStep(iter([]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert kinds.kinds == ["unary_unary", "stream_unary", "stream_unary"]


def test_a_method_that_takes_one_request_is_refused():
    method = reward_pb2.DESCRIPTOR.services_by_name["Reward"].methods_by_name["GetInfo"]
    with pytest.raises(ValueError, match="GetInfo: takes one request"):
        RequestStreamMethod(grpc.insecure_channel("127.0.0.1:1"), method)


def test_open_channel_reads_a_response_stream_on_the_calling_thread(served):
    """The channel's spin thread hands nothing over: the call's completion (its done
    callbacks) happens in the thread that reads the responses."""
    from quartet.clients.channel import open_channel
    from quartet.security import ClientSecurity

    address = served[3]
    channel = open_channel(address, security=ClientSecurity())
    stub = unary_when_single(reward_pb2_grpc.RewardStub(channel), channel,
                             reward_pb2.DESCRIPTOR.services_by_name["Reward"])
    call = stub.Score(iter([_score(0, 2)]), timeout=10)
    done_in: list[str] = []
    call.add_done_callback(lambda _c: done_in.append(threading.current_thread().name))
    assert [list(r.rewards) for r in call] == [[2.0, 2.0]]
    assert done_in == [threading.current_thread().name]
    channel.close()
