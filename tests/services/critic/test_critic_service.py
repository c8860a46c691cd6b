"""The critic role in-process behind a real gRPC server: values and value-loss steps."""

import pytest
import torch

from quartet.clients.critic import GrpcCriticClient
from quartet.codec import RowBatch
from quartet.config.deepspeed import DeepSpeedConfig
from quartet.config.model import ModelConfig
from quartet.config.optim import AdamConfig, OptimConfig
from quartet.ppo.batch import ValueLossSettings, ValueMiniBatch
from quartet.ppo.role_config import RoleTrainConfig, TrainingRoleConfig
from quartet.serving import RoleServer
from quartet.v1 import critic_pb2_grpc


@pytest.fixture(scope="module")
def critic_client(tiny_model_path):
    from services.critic.critic import Critic
    from services.critic.servicer import CriticServicer

    cfg = TrainingRoleConfig(
        model=ModelConfig(model_name_or_path=str(tiny_model_path)),
        ds=DeepSpeedConfig(zero_stage=0, param_dtype="fp32"),
        optim=OptimConfig(lr_scheduler="constant"), adam=AdamConfig(lr=1e-3),
        train=RoleTrainConfig(batch_size=2, micro_batch_size=1),
    )
    srv = RoleServer("critic", port=0)
    srv.start()
    critic_pb2_grpc.add_CriticServicer_to_server(CriticServicer(Critic(cfg)), srv.grpc_server)
    srv.set_serving(True)
    yield GrpcCriticClient(srv.address, timeout_s=120)
    srv.stop(0)


def test_values_have_one_per_response_token_and_training_fits_returns(critic_client):
    batch = RowBatch([torch.tensor([1, 20, 21, 22]), torch.tensor([1, 40, 41])], [2, 1])
    values = critic_client.values(batch)
    assert [v.numel() for v in values] == [2, 2]
    returns = [torch.full((2,), 0.5), torch.full((2,), -0.5)]
    first = last = None
    for _ in range(30):
        old = critic_client.values(batch)
        m = critic_client.train_step(ValueMiniBatch(batch, old, returns),
                                     ValueLossSettings(clip_eps=None))
        first = first if first is not None else m["value_loss"]
        last = m["value_loss"]
    assert last < first / 4, (first, last)
