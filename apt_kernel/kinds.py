"""The component kinds and their registration hooks, in the order components are built."""

REGISTRATION_HOOKS = {
    "data": "register_data",
    "encoder": "register_encoders",
    "model": "register_models",
    "loss": "register_losses",
    "callback": "register_callbacks",
    "trainer": "register_trainers",
}
KINDS = tuple(REGISTRATION_HOOKS)
