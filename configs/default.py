"""Fields shared by every experiment, with their defaults.

Every field a config may set is defined here: a config (or a command-line
`--config.x=...`) that sets a field not defined here is rejected at start-up.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = 'default'              # Names the default workdir checkpoints/<name>.

  # Data: TFDS name and split syntax; local_data_dir reads raw files instead.
  config.dataset = 'fashion_mnist'
  config.train_split = 'train'
  config.val_split = ''                # '' = no validation split.
  config.test_split = 'test'
  config.local_data_dir = ''           # IDX .gz files, or train/<class>/* test/<class>/* tree.
  config.tfds_data_dir = ''            # '' = TFDS' default (~/tensorflow_datasets).

  # Model: a name in cnnjax.models.MODELS and its options.
  config.model = 'mlp'
  config.model_kwargs = ml_collections.ConfigDict()
  config.trainable = '.*'              # Regex over 'a/b/kernel' param paths; others frozen.
  config.pretrained = ''               # '' = random init; 'imagenet' for the backbone.

  # Optimisation: the studies' Adam 1e-3 (Keras' epsilon 1e-7).
  config.learning_rate = 1e-3
  config.adam_epsilon = 1e-7
  config.batch_size = 64               # Global batch, over all devices.
  config.eval_batch_size = 500
  config.num_epochs = 10
  config.num_train_steps = -1          # > 0 cuts the run short (smoke tests).
  config.seed = 0

  # Checkpoints (orbax, in <workdir>/checkpoints): every epoch end and every N steps.
  config.checkpoint_every_steps = 0    # 0 = only at epoch ends (and on SIGTERM/SIGINT).
  config.keep_checkpoints = 3
  config.resume = True                 # False: move an existing run aside and start afresh.
  return config
