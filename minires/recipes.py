"""Named training recipes (``minires train --recipe NAME``); flags override them."""

RECIPES = {
    # The CPU recipe: reached 85.9% with torch in 49 min on 2 cores (17 epochs).
    "fast": dict(model="resnet20", epochs=17, batch_size=128, lr=0.2, schedule="onecycle",
                 momentum=0.9, nesterov=True, weight_decay=5e-4, label_smoothing=0.1),
    # The default of `--time-budget`: a few epochs on a CPU.  Each choice was
    # measured on the 15-minute budget (docs/benchmarks.md, "Time to accuracy").
    "budget": dict(model="resnet20", epochs=200, batch_size=256, lr=0.4, schedule="onecycle",
                   pct_start=0.25, anneal="linear", momentum=0.9, nesterov=True,
                   weight_decay=5e-4, no_decay_bn_bias=True, label_smoothing=0.1,
                   ema=0.0, tta="flip", eval_every=0, early_crop=24, early_fraction=0.5),
    # He et al. 2015, section 4.2: 64k iterations ~ 164 epochs at batch 128, lr 0.1
    # divided by 10 at 50% and 75%, weight decay 1e-4, momentum 0.9 (paper: 91.25%
    # for ResNet-20).
    "he2015": dict(model="resnet20", epochs=164, batch_size=128, lr=0.1, schedule="multistep",
                   momentum=0.9, nesterov=False, weight_decay=1e-4, label_smoothing=0.0),
}
