"""State probes: R^2 near 1 where the features hold the state, near 0 on noise; open-loop features
line up with the steps they predict."""

import jax
import numpy as np

from dreamerjax.analysis import probes
from tests.toy_models import ToyWorldModel, toy_batch


def test_probes_recover_the_state_and_not_noise():
  rng = np.random.default_rng(0)
  state = rng.normal(size=(3000, 3))
  target = np.concatenate([state, np.sin(state[:, :1]) * state[:, 1:2]], 1)  # one nonlinear
  noise = rng.normal(size=(3000, 8))
  train, test = slice(0, 2400), slice(2400, None)
  with_state = np.concatenate([state, noise], 1)
  prediction = probes.fit_probe(with_state[train], target[train], with_state[test],
                                jax.random.key(0), steps=1500)
  assert probes.r2_score(prediction, target[test]) > 0.95
  prediction = probes.fit_probe(noise[train], target[train], noise[test], jax.random.key(0),
                                steps=1500)
  assert abs(probes.r2_score(prediction, target[test])) < 0.15
  np.testing.assert_allclose(probes.r2_score(target, target), 1.0)


def test_open_loop_features_predict_the_indexed_steps(tmp_path):
  data = toy_batch(batch_size=2, length=40, episode_length=13)
  data['truth/x'] = data['vector']
  features = probes.latent_features(ToyWorldModel(), {'dynamics': {}}, data, (0, 1, 5),
                                    jax.random.key(0), chunk=16)
  assert len(features[0][0]) == 80
  for horizon, (feats, index) in features.items():
    # The toy model is exact, so every feature equals the state of the step it is indexed by,
    # and no open-loop window crosses the start of an episode.
    np.testing.assert_allclose(feats, data['vector'][index[:, 0], index[:, 1]], atol=1e-5)
    if horizon:
      starts = index[:, 1] - horizon
      assert np.all(starts >= 0)
      for offset in range(1, horizon + 1):
        assert not np.any(data['is_first'][index[:, 0], starts + offset])
  table = probes.probe_table(features, data, jax.random.key(1), steps=300)
  assert set(table) == {'x', 'reward'} and table['x'][5] > 0.9
  paths = probes.write_report(table, str(tmp_path), 'toy')
  assert '| x |' in open(paths['markdown']).read()
  assert (tmp_path / 'probes.png').stat().st_size > 1000
