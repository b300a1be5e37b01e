"""Fields shared by every experiment, with their defaults.

Every field a config may set is defined here: a config (or a command-line
`--config.x=...`) that sets a field not defined here is rejected at start-up.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = 'default'              # Names the default workdir checkpoints/<name>.

  # Data: fashion_mnist, mnist, cifar10, 'image_folder' (your own tree, with local_data_dir)
  # or any TFDS image-classification dataset's name; splits in TFDS syntax.
  config.dataset = 'fashion_mnist'
  config.train_split = 'train'
  config.val_split = ''                # '' = no validation split.
  config.test_split = 'test'
  config.local_data_dir = ''           # IDX .gz files, or train/<class>/* test/<class>/* tree.
  config.tfds_data_dir = ''            # '' = TFDS' default (~/tensorflow_datasets).
  config.image_size = 0                # Resize images to N x N (0 = the dataset's own size).
  config.channels = 0                  # 1 grey or 3 RGB (0 = the dataset's own).
  config.image_key = ''                # TFDS image / label feature names ('' = from its info).
  config.label_key = ''
  config.data_in_memory = 'auto'       # 'true' hold splits in memory, 'false' stream them,
                                       # 'auto' stream what exceeds half the machine's memory.
  config.data_workers = 0              # Threads decoding streamed batches (0 = CPU cores).

  # Model: a name in cnnjax.models.MODELS and its options.
  config.model = 'mlp'
  config.model_kwargs = ml_collections.ConfigDict()
  config.trainable = '.*'              # Regex over 'a/b/kernel' param paths; others frozen.
  config.cache_features = False        # Frozen backbone: compute its features once, train the head.

  # Pretrained backbone (VGG16/MobileNetV2 classifiers): Keras' ImageNet weights.
  config.pretrained = ''               # '' = random init; 'imagenet' for the backbone.
  config.pretrained_path = ''          # Keras .h5 or a converted dir; '' = cache/download.
  config.pretrained_load = '^backbone/'  # Regex over variable paths taken from the weights.

  # Fine-tuning stage after num_epochs of transfer learning (0 epochs = none).
  config.fine_tune = ml_collections.ConfigDict()
  config.fine_tune.num_epochs = 0
  config.fine_tune.learning_rate = 1e-5
  config.fine_tune.unfreeze_blocks = 0  # Top blocks of the backbone that also train,
  config.fine_tune.unfreeze_from = ''  # or every backbone layer from this Keras layer on.
  config.fine_tune.batchnorm = 'inference'  # Unfrozen BatchNorms: 'inference' or 'train'.

  # Optimisation: the studies' Adam 1e-3 (Keras' epsilon 1e-7), constant rate.
  config.optimizer = 'adam'            # 'adam', 'adamw' (decoupled weight decay), 'sgd' (Nesterov).
  config.learning_rate = 1e-3          # The peak rate of a schedule.
  config.adam_epsilon = 1e-7
  config.adam_update = 'keras'         # Keras' Adam step (eps before bias correction) or 'optax'.
  config.momentum = 0.9                # SGD's momentum.
  config.weight_decay = 0.0            # adamw / sgd: kernels decay, biases and norms do not.
  config.grad_clip_norm = 0.0          # Clip gradients to this global norm (0 = off).
  config.schedule = 'constant'         # 'constant', 'warmup_cosine', 'onecycle', 'piecewise',
                                       # 'plateau' (x lr_decay_factor after plateau_patience
                                       # epochs without a lower training loss).
  config.warmup_steps = 0              # Linear warmup of the learning rate from 0 (0 = none).
  config.lr_boundaries = (0.5, 0.75)   # piecewise: at these fractions of a stage's steps the
  config.lr_decay_factor = 0.1         # rate is multiplied by this.
  config.plateau_patience = 3          # plateau: epochs without improvement before a cut.
  config.label_smoothing = 0.0         # Cross-entropy against (1 - a) one-hot + a / classes.
  config.ema_decay = 0.0               # > 0: evaluate an EMA of the weights (e.g. 0.999).

  # Augmentation, on the device in the training step (keys from seed and step: resumable).
  config.augment = ml_collections.ConfigDict()
  config.augment.crop_padding = 0      # Pad by N zero pixels, crop back at a random offset.
  config.augment.flip = False          # Mirror left-right half the time (not for digits/text).
  config.augment.erasing_prob = 0.0    # Random erasing: a noise rectangle, this often.
  config.augment.flip_test = False     # Evaluate on the mean logits of image and mirror.
  config.augment.translate_test = 0    # N > 0: also on copies shifted N pixels (augment.py).

  # Model selection at epoch ends, as Keras' EarlyStopping(restore_best_weights=True).
  config.selection = ml_collections.ConfigDict()
  config.selection.monitor = ''        # 'val_accuracy', 'val_loss', 'train_loss', ... ('' = off:
                                       # the last epoch's weights, no early stopping).
  config.selection.mode = 'auto'       # 'max', 'min', or 'auto' (min for losses).
  config.selection.min_delta = 0.0     # A smaller change is no improvement.
  config.selection.patience = 0        # Stop after N epochs without improvement (0 = never).
  config.selection.restore_best = True  # Evaluate, report, predict with the best epoch's weights.
  config.batch_size = 64               # Global batch, over all devices.
  config.eval_batch_size = 250        # Any size gives the same metrics; 250 suits CPU caches.
  config.num_epochs = 10
  config.num_train_steps = -1          # > 0 cuts the run short (smoke tests).
  config.half_precision = False        # bfloat16 compute, float32 params (GPU/TPU; slow on CPU).
  config.steps_per_dispatch = 0        # Training steps per device call (0 = 1 on CPU, 20 on
                                       # GPU/TPU); the same steps, fewer round trips.
  config.data_on_device = 'auto'       # 'true': the whole training split on the device, batches
                                       # gathered there; 'auto': on GPU/TPU when it fits.
  config.seed = 0

  # Collapse guard: warn (or stop) when the loss sits at ln(classes) or ReLU layers die.
  config.collapse_guard = ml_collections.ConfigDict()
  config.collapse_guard.every_steps = 100    # Check the losses and ReLUs this often.
  config.collapse_guard.patience_steps = 1000  # Consecutive steps near ln(C) that count.
  config.collapse_guard.loss_band = 0.01     # |loss - ln(C)| within this is "near".
  config.stop_on_collapse = False      # True: save and stop instead of only warning.

  # Checkpoints (orbax, in <workdir>/checkpoints): every epoch end and every N steps.
  config.checkpoint_every_steps = 0    # 0 = only at epoch ends (and on SIGTERM/SIGINT).
  config.keep_checkpoints = 3
  config.resume = True                 # False: move an existing run aside and start afresh.
  return config
